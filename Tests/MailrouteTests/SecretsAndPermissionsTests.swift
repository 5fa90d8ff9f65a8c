import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// Secrets and file permissions (issue 12, item 6): the key file, the queue's files, where
/// passwords may never show up, and a user outside the service group.
@Suite struct SecretsAndPermissionsTests {
    static func mode(_ path: String) -> mode_t? {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o7777 : nil
    }

    /// `bash -c SCRIPT` through posix_spawn and waitpid (`runuser`/`setpriv` children are
    /// reaped here, where Foundation's `Process` left them).
    static func shell(_ script: String) throws -> ProcessResult {
        try PostgresTestServer.spawnAndWait(["-c", script])
    }

    static func quoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: #"'\''"#) + "'" }

    // MARK: - The key file

    @Test func keyGenerateWritesAFileOnlyItsOwnerReadsEvenUnderAnOpenUmask() throws {
        let env = try CtlEnvironment(generateKey: false)
        let result = try Self.shell("umask 000; exec \(Paths.mailroutectl.path) --config \(Self.quoted(env.configPath)) key generate")
        #expect(result.status == 0, "\(result.output)")
        #expect(Self.mode(env.keyPath) == 0o600)
    }

    @Test func aKeyFileItsGroupOrOthersCanReadIsRefusedNamingTheFix() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(platformPort: server.port)
        #expect(Self.mode(env.keyPath) == 0o600)
        for open: mode_t in [0o640, 0o604, 0o660] {
            chmod(env.keyPath, open)
            let add = try env.addConfig(name: "main-\(String(open, radix: 8))", port: server.port, extra: ["--username", "u"], password: "pw")
            #expect(add.status == 1)
            #expect(add.stderr.contains("chmod 600 \(env.keyPath)"), "the fix: \(add.stderr)")
            #expect(add.stderr.split(separator: "\n").count == 1)
            let daemon = try runProcess(Paths.mailrouted, ["--config", env.configPath], timeout: 30)
            #expect(daemon.status != 0, "refused at start: \(daemon.output)")
            #expect(daemon.output.contains("chmod 600 \(env.keyPath)"), "\(daemon.output)")
            #expect(!daemon.output.contains("started"))
        }
        chmod(env.keyPath, 0o400)
        #expect(try env.addConfig(name: "readonly", port: server.port, extra: ["--username", "u"], password: "pw").status == 0, "0400 is private too")

        // systemd's credential is the service's alone: its mode is systemd's, not checked.
        let credentials = env.directory.appendingPathComponent("credentials").path
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: false)
        chmod(credentials, 0o500)
        let credential = credentials + "/" + KeyFile.credentialName
        try FileManager.default.copyItem(atPath: env.keyPath, toPath: credential)
        chmod(credential, 0o440)
        chmod(env.keyPath, 0o644)
        let viaCredential = try env.ctl(
            ["config", "add", "--tenant", "acme", "--name", "credential", "--host", "127.0.0.1", "--port", "\(server.port)",
             "--security", "none", "--from-address", "c@acme.test", "--username", "u", "--password-stdin"],
            stdin: "pw\n", environment: ["CREDENTIALS_DIRECTORY": credentials])
        #expect(viaCredential.status == 0, "\(viaCredential.output)")
    }

    /// The daemon lowers RLIMIT_CORE at start through prlimit64: a unit filter that denied it
    /// would kill the daemon with SIGSYS before it said a word.
    @Test func theUnitsSystemCallFilterLetsTheDaemonForbidCoreFiles() throws {
        let unit = try String(contentsOf: Paths.packageRoot.appendingPathComponent("systemd/mailroute.service"), encoding: .utf8)
        let denied = unit.split(separator: "\n").filter { $0.hasPrefix("SystemCallFilter=~") }
            .flatMap { $0.dropFirst("SystemCallFilter=~".count).split(separator: " ") }
        #expect(!denied.isEmpty)
        for set in denied {
            let listed = try Self.shell("systemd-analyze syscall-filter \(set) 2>/dev/null")
            #expect(listed.status == 0, "\(set): \(listed.output)")
            #expect(!listed.stdout.split(whereSeparator: \.isWhitespace).contains("prlimit64"), "\(set) denies prlimit64")
        }
    }

    // MARK: - The queue's files

    /// Made by either program under the most open umask, the database and its -wal and -shm
    /// are the daemon's and its group's only; one found open to others is closed.
    @Test func theQueueDatabaseAndItsWALAreNeverWorldReadable() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(platformPort: server.port)
        let ctl = "\(Paths.mailroutectl.path) --config \(Self.quoted(env.configPath))"
        #expect(try Self.shell("umask 000; exec \(ctl) migrate").status == 0)
        #expect(Self.mode(env.databasePath) == 0o660, "made by mailroutectl")
        let elsewhere = env.directory.appendingPathComponent("state/queue.db").path
        let toml = try String(contentsOfFile: env.configPath, encoding: .utf8)
        try toml.replacingOccurrences(of: #"path = "queue.db""#, with: #"path = "\#(elsewhere)""#)
            .write(toFile: env.configPath, atomically: true, encoding: .utf8)
        #expect(try Self.shell("umask 000; exec \(ctl) migrate").status == 0)
        #expect(Self.mode(env.directory.appendingPathComponent("state").path) == 0o770, "a directory it makes is not open to others")
        #expect(Self.mode(elsewhere) == 0o660)
        try toml.write(toFile: env.configPath, atomically: true, encoding: .utf8)

        try FileManager.default.removeItem(atPath: env.databasePath)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: "/bin/sh")
        daemon.arguments = ["-c", "umask 000; exec \(Paths.mailrouted.path) --config \(Self.quoted(env.configPath))"]
        let log = env.directory.appendingPathComponent("mailrouted.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        daemon.standardError = try FileHandle(forWritingTo: log)
        daemon.standardOutput = daemon.standardError
        try daemon.run()
        defer {
            kill(daemon.processIdentifier, SIGTERM)
            daemon.waitUntilExit()
        }
        // The daemon keeps the database open: -wal and -shm stay while it runs.
        let all = DatabaseFiles.all(env.databasePath)
        #expect(waitUntil(timeout: 15) { all.allSatisfy { FileManager.default.fileExists(atPath: $0) } }, "\((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        for file in all { #expect(Self.mode(file) == 0o660, "\(file) made by mailrouted") }

        // An enqueuer's sqlite3 under umask 022 made one readable by all: the next open closes it.
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        try FileManager.default.removeItem(atPath: env.databasePath)
        let old = try DatabaseQueue(path: env.databasePath)
        try old.close()
        chmod(env.databasePath, 0o644)
        #expect(try env.ctl("queue", "list").status == 0)
        #expect(Self.mode(env.databasePath) == 0o640)
    }

    // MARK: - A user outside the service group

    @Test(arguments: Backend.allCases) func aUserOutsideTheServiceGroupGetsOneLineNamingTheFile(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        #expect(try env.ctl("migrate").status == 0)
        let nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups \(Paths.mailroutectl.path) --config \(Self.quoted(env.configPath))"
        var denied: String
        switch backend {
        case .sqlite:
            chmod(env.databasePath, 0o660)
            denied = env.databasePath
        case .postgres:
            let passwordFile = env.directory.appendingPathComponent("pg.password").path
            chmod(passwordFile, 0o640)
            denied = passwordFile
        }
        for command in ["queue list", "config list --json", "enqueue --category report --to a@example.com --subject s --text -"] {
            let result = try Self.shell("exec \(nobody) \(command) </dev/null")
            #expect(result.status == 1, "\(command): \(result.output)")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one line: \(result.stderr)")
            #expect(result.stderr.hasPrefix("mailroutectl: "))
            #expect(result.stderr.contains(denied), "names the file: \(result.stderr)")
            #expect(result.stderr.contains("nobody"), "and who tried: \(result.stderr)")
            for noise in ["SQLite error", "SQLITE_", "Fatal error", "Backtrace", "PSQLError"] {
                #expect(!result.output.contains(noise), "\(noise): \(result.output)")
            }
        }

        // The config file itself, as the package makes it (root:mailroute 0640).
        chmod(env.configPath, 0o640)
        let unreadable = try Self.shell("exec \(nobody) queue list")
        #expect(unreadable.status == 1)
        #expect(unreadable.stderr.split(separator: "\n").count == 1)
        #expect(unreadable.stderr.contains(env.configPath) && unreadable.stderr.contains("permission denied for user nobody"), "\(unreadable.stderr)")
    }

    // MARK: - Passwords appear nowhere

    /// A tenant's and the platform relay's passwords (and on PostgreSQL the database's), used
    /// for real logins by the daemon and every command that shows or uses a configuration; then
    /// every byte of the database, its -wal and -shm, the log at debug level, STATUS and every
    /// output is searched for them, plain and as AUTH PLAIN/LOGIN would base64-encode them.
    @Test(arguments: Backend.allCases) func passwordsAppearInNoFileLogStatusOrOutput(_ backend: Backend) throws {
        let tenantPassword = "tenant-Pw-\(UUID().uuidString.prefix(12))"
        let relayPassword = "relay-Pw-\(UUID().uuidString.prefix(12))"
        var options = SMTPTestServer.Options()
        options.starttls = true
        options.auth = ("alice", tenantPassword)
        options.moreLogins = [("relay", relayPassword)]
        let server = try SMTPTestServer(options)
        let env = try CtlEnvironment(backend: backend, platformPort: server.port, extraTOML: "\n[log]\nlevel = \"debug\"\n")
        let relayPasswordFile = env.directory.appendingPathComponent("relay.password").path
        try PrivateFile.create(at: relayPasswordFile, contents: Array((relayPassword + "\n").utf8))
        let toml = try String(contentsOfFile: env.configPath, encoding: .utf8)
        let platform = "port = \(server.port)\nsecurity = \"none\""
        #expect(toml.contains(platform))
        try toml.replacingOccurrences(
            of: platform,
            with: """
                port = \(server.port)
                security = "starttls"
                username = "relay"
                password_file = "\(relayPasswordFile)"
                ca_file = "\(TestCA.shared.caFile)"
                """
        ).write(toFile: env.configPath, atomically: true, encoding: .utf8)

        var outputs: [String] = []
        func ctl(_ arguments: String..., stdin: String? = nil) throws -> ProcessResult {
            let result = try env.ctl(arguments, stdin: stdin)
            outputs.append(result.output)
            return result
        }
        let add = try env.addConfig(
            name: "main", port: server.port, security: "starttls",
            extra: ["--username", "alice", "--ca-file", TestCA.shared.caFile], password: tenantPassword)
        outputs.append(add.output)
        #expect(add.status == 0, "\(add.output)")
        #expect(try ctl("config", "verify", "acme/main").status == 0)
        #expect(try ctl("config", "test", "acme/main", "--to", "me@example.com").status == 0)
        // A wrong password too: the error paths print server text and suggestions.
        outputs.append(try env.addConfig(
            name: "wrong", port: server.port, security: "starttls",
            extra: ["--username", "alice", "--ca-file", TestCA.shared.caFile], password: tenantPassword + "-not").output)
        #expect(try ctl("config", "verify", "acme/wrong").status != 0)

        let listener = try NotifyListener()
        let daemon = DaemonProcess(env: env)
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path])
        defer { daemon.stop() }
        let tenantMail = try daemon.enqueue(tenant: "acme", subject: "through the tenant")
        let platformMail = try daemon.enqueue(tenant: nil, subject: "through the relay")
        #expect(try daemon.waitFor(tenantMail, .sent).status == .sent)
        #expect(try daemon.waitFor(platformMail, .sent).status == .sent)
        #expect(Set(server.messages().compactMap(\.envelope.login)).isSuperset(of: ["alice", "relay"]), "both logged in")
        for arguments in [["config", "show", "acme/main"], ["config", "show", "acme/main", "--json"], ["config", "list"],
                          ["config", "list", "--json"], ["queue", "show", "\(tenantMail)"], ["queue", "show", "\(platformMail)", "--json"],
                          ["queue", "list", "--json"], ["queue", "stats"], ["route", "resolve", "--tenant", "acme"]] {
            let result = try env.ctl(arguments)
            #expect(result.status == 0, "\(arguments): \(result.output)")
            outputs.append(result.output)
        }
        // Core files would hold them: none may be written.
        let limits = (try? String(contentsOfFile: "/proc/\(daemon.process!.processIdentifier)/limits", encoding: .utf8)) ?? ""
        #expect(limits.split(separator: "\n").contains { $0.hasPrefix("Max core file size") && $0.split(separator: " ").contains("0") },
                "\(limits)")

        var haystacks: [(String, Data)] = []
        if backend == .sqlite {
            // While the daemon runs: the WAL holds the latest writes.
            for file in DatabaseFiles.all(env.databasePath) {
                haystacks.append((file, FileManager.default.contents(atPath: file) ?? Data()))
            }
        }
        daemon.stop()
        if backend == .sqlite {
            haystacks.append((env.databasePath + " after stop", FileManager.default.contents(atPath: env.databasePath) ?? Data()))
        } else {
            haystacks.append(("tables", Data(try env.psql!.run("SELECT * FROM smtp_configs; SELECT * FROM messages; SELECT * FROM attempts;").utf8)))
        }
        haystacks.append(("log", Data(daemon.log().utf8)))
        haystacks.append(("STATUS", Data(listener.messages.joined(separator: "\n").utf8)))
        haystacks.append(("outputs", Data(outputs.joined(separator: "\n").utf8)))
        #expect(daemon.log().contains("delivery"), "the log is the daemon's")

        var secrets = [tenantPassword, relayPassword]
        if let psql = env.psql { secrets.append(psql.password) }
        var needles: [(String, Data)] = []
        for secret in secrets {
            needles.append(("\(secret)", Data(secret.utf8)))
            needles.append(("base64 of \(secret)", Data(Data(secret.utf8).base64EncodedString().utf8)))
        }
        needles.append(("AUTH PLAIN alice", Data(Data("\0alice\0\(tenantPassword)".utf8).base64EncodedString().utf8)))
        needles.append(("AUTH PLAIN relay", Data(Data("\0relay\0\(relayPassword)".utf8).base64EncodedString().utf8)))
        for (place, found) in haystacks {
            // The shared test server's password, "mailroute-test", begins the tests' temporary
            // directory's name: those paths go first, or every log line would match.
            let haystack = Data(String(decoding: found, as: UTF8.self).replacingOccurrences(of: "/mailroute-tests/", with: "/").utf8)
            for (what, needle) in needles {
                #expect(haystack.range(of: needle) == nil, "\(what) in \(place)")
            }
        }
    }
}
