import Foundation
import Testing

@testable import MailrouteCore

@Suite struct ConfigFileTests {
    @Test func emptyFileGivesEveryDefault() throws {
        let config = try MailrouteConfiguration(toml: "", baseDirectory: "/etc/mailroute")
        #expect(config == MailrouteConfiguration())
        #expect(config.delivery.retryInitialSeconds == 30)
        #expect(config.delivery.retryMaxSeconds == 3600)
        #expect(config.delivery.maxAttempts == 10)
        #expect(config.category("password_reset") == .init(priority: 1, ttlSeconds: 3600))
        #expect(config.category("invite").priority == 2)
        #expect(config.category("call_notification").priority == 2)
        #expect(config.category("report").priority == 4)
        #expect(config.category("newsletter").priority == 3)
    }

    @Test func shippedExamplesParse() throws {
        for name in ["mailroute.toml", "mailroute.dev.toml"] {
            let path = Paths.packageRoot.appendingPathComponent("etc/\(name)").path
            _ = try MailrouteConfiguration(contentsOfFile: path)
        }
    }

    /// A relative MAILROUTE_CONFIG follows the shell's directory: the error says so.
    @Test func aMissingRelativeConfigSaysItIsRelative() throws {
        let result = try runProcess(
            Paths.mailroutectl, ["queue", "list"], environment: ["MAILROUTE_CONFIG": "etc/no-such-mailroute.toml"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("no-such-mailroute.toml: No such file or directory"), "\(result.stderr)")
        #expect(result.stderr.contains("is relative to the current directory; use an absolute path"))
        #expect(MailrouteConfiguration.absolutePath("etc/../etc/a.toml").hasPrefix("/"))
    }

    /// The installed service used to fail with a bare "You don't have permission".
    @Test(.enabled(if: geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"), "needs root to drop to another user"))
    func anUnreadableConfigNamesTheUserAndTheFilesOwnerAndMode() throws {
        let file = Paths.temporaryDirectory("perm").appendingPathComponent("mailroute.toml")
        try "".write(to: file, atomically: true, encoding: .utf8)
        chmod(file.path, 0o600)
        chmod(file.deletingLastPathComponent().path, 0o755)
        let result = try runProcess(
            URL(fileURLWithPath: "/usr/bin/setpriv"),
            ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", Paths.mailroutectl.path, "--config", file.path, "queue", "list"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("permission denied for user nobody; the file is root:root mode 600"), "\(result.stderr)")
    }

    @Test func everyKeyIsRead() throws {
        let toml = """
            [queue]
            path = "q.db"
            poll_interval_s = 0.5
            lease_s = 120
            retention_days = 7
            [delivery]
            helo_name = "mx.example.org"
            connect_timeout_s = 3
            command_timeout_s = 4
            default_max_connections = 2
            idle_timeout_s = 9
            max_messages_per_connection = 50
            retry_initial_s = 10
            retry_max_s = 600
            max_attempts = 5
            cooldown_s = 60
            breaker_timeouts = 5
            max_queue_lifetime_s = 86400
            allowed_networks = ["127.0.0.0/8", "fd00::/8", "10.1.2.3"]
            [platform]
            host = "relay.example.org"
            port = 465
            security = "tls"
            username = "relay"
            password_file = "/run/relay.pw"
            from_address = "noreply@example.org"
            from_name = "Example"
            ca_file = "ca.pem"
            [categories.report]
            priority = 5
            [categories.digest]
            priority = 4
            ttl_s = 86400
            [secrets]
            key_file = "k"
            [dkim]
            keys_dir = "dkim"
            [log]
            level = "debug"
            target = "journal"
            """
        let c = try MailrouteConfiguration(toml: toml, baseDirectory: "/srv/mr")
        #expect(c.queue.path == "/srv/mr/q.db")
        #expect(c.queue.pollIntervalSeconds == 0.5)
        #expect(c.queue.leaseSeconds == 120)
        #expect(c.queue.retentionDays == 7)
        #expect(c.delivery.heloName == "mx.example.org")
        #expect(c.delivery.connectTimeoutSeconds == 3)
        #expect(c.delivery.commandTimeoutSeconds == 4)
        #expect(c.delivery.defaultMaxConnections == 2)
        #expect(c.delivery.idleTimeoutSeconds == 9)
        #expect(c.delivery.maxMessagesPerConnection == 50)
        #expect(c.delivery.retryInitialSeconds == 10)
        #expect(c.delivery.retryMaxSeconds == 600)
        #expect(c.delivery.maxAttempts == 5)
        #expect(c.delivery.cooldownSeconds == 60)
        #expect(c.delivery.breakerTimeouts == 5)
        #expect(c.delivery.maxQueueLifetimeSeconds == 86400)
        #expect(c.delivery.allowedNetworks.map(\.description) == ["127.0.0.0/8", "fd00::/8", "10.1.2.3/32"])
        #expect(c.platform.host == "relay.example.org")
        #expect(c.platform.port == 465)
        #expect(c.platform.security == .tls)
        #expect(c.platform.username == "relay")
        #expect(c.platform.passwordFile == "/run/relay.pw")
        #expect(c.platform.fromAddress == "noreply@example.org")
        #expect(c.platform.fromName == "Example")
        #expect(c.platform.caFile == "/srv/mr/ca.pem")
        #expect(c.category("report") == .init(priority: 5))
        #expect(c.category("digest") == .init(priority: 4, ttlSeconds: 86400))
        #expect(c.category("password_reset").ttlSeconds == 3600, "overriding one category keeps the others")
        #expect(c.secrets.keyFile == "/srv/mr/k")
        #expect(c.dkim.keysDirectory == "/srv/mr/dkim")
        #expect(c.log.level == .debug)
        #expect(c.log.target == .journal)
    }

    @Test(arguments: [
        ("[queue]\npathh = \"x\"", "unknown key queue.pathh"),
        ("[bogus]\na = 1", "unknown key bogus"),
        ("top = 1", "unknown key top"),
        ("[categories.report]\nprio = 1", "unknown key categories.report.prio"),
        ("[delivery]\nmax_attempts = \"ten\"", "delivery.max_attempts must be an integer"),
        ("[platform]\nport = 70000", "platform.port must be between 1 and 65535"),
        ("[platform]\nsecurity = \"ssl\"", "platform.security must be one of starttls, tls, none"),
        ("[platform]\nfrom_address = \"not an address\"", "platform.from_address"),
        ("[log]\ntarget = \"syslog\"", "log.target must be one of auto, journal, stderr"),
        ("[categories.Bad]\npriority = 1", "categories.Bad"),
        ("[categories.report]\npriority = 9", "categories.report.priority must be between 1 and 5"),
        ("[delivery]\nretry_initial_s = 100\nretry_max_s = 10", "retry_max_s"),
        ("[delivery]\nallowed_networks = [\"10.0.0.0/33\"]", #"delivery.allowed_networks: "10.0.0.0/33" is not a network in CIDR form"#),
        ("[delivery]\nallowed_networks = \"127.0.0.0/8\"", "delivery.allowed_networks must be an array of strings"),
        ("[delivery]\nmax_queue_lifetime_s = 0", "delivery.max_queue_lifetime_s must be a positive number"),
        ("[queue\npath = 1", "invalid TOML at line 1"),
    ])
    func badFilesNameTheKey(toml: String, expected: String) throws {
        let error = #expect(throws: ConfigFileError.self) {
            try MailrouteConfiguration(toml: toml, baseDirectory: "/")
        }
        #expect(error?.description.contains(expected) == true, "\(error?.description ?? "") lacks \(expected)")
    }

    @Test func missingFileIsAClearError() {
        let error = #expect(throws: ConfigFileError.self) {
            try MailrouteConfiguration(contentsOfFile: "/nonexistent/mailroute.toml")
        }
        #expect(error?.description.contains("/nonexistent/mailroute.toml") == true)
    }
}
