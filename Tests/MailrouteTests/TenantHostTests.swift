import Foundation
import Testing

@testable import MailrouteCore

/// SPEC §4 "Tenant-supplied hosts": a tenant's configuration cannot point the daemon at this
/// host, its private networks or the cloud's metadata service, unless the operator lists the
/// network in `[delivery] allowed_networks`. The platform relay is exempt.
@Suite struct TenantHostTests {
    static let none = NetworkPolicy(allowed: [])

    @Test(arguments: [
        ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
        ("fd12:3456::1", "private"), ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"),
        ("64:ff9b::a00:1", "NAT64"), ("2002:a9fe:a9fe::1", "6to4"), ("100.64.0.1", "shared"), ("255.255.255.255", "broadcast"),
    ])
    func inwardAddressesAreRefusedByName(address: String, kind: String) throws {
        let ip = try #require(IPAddress(address))
        let reason = try #require(Self.none.refusal(of: ip))
        #expect(reason.contains(kind), "\(reason)")
        #expect(reason.contains("allowed_networks"), "the fix is named")
        #expect(Self.none.refusal(ofHost: address) != nil)
    }

    @Test(arguments: ["8.8.8.8", "172.32.0.1", "192.169.0.1", "2a00:1450:4001::1b", "169.255.0.1", "100.128.0.1"])
    func globalAddressesPass(address: String) throws {
        #expect(Self.none.refusal(of: try #require(IPAddress(address))) == nil)
    }

    @Test func listedNetworksAreAllowedAndOnlyThem() throws {
        let policy = NetworkPolicy(allowed: [try #require(IPNetwork("127.0.0.0/8")), try #require(IPNetwork("10.20.0.0/16"))])
        #expect(policy.refusal(of: try #require(IPAddress("127.0.0.1"))) == nil)
        #expect(policy.refusal(of: try #require(IPAddress("::ffff:127.0.0.1"))) == nil, "mapped IPv4 is IPv4")
        #expect(policy.refusal(of: try #require(IPAddress("10.20.255.1"))) == nil)
        #expect(policy.refusal(of: try #require(IPAddress("10.21.0.1"))) != nil)
        #expect(policy.refusal(of: try #require(IPAddress("::1"))) != nil, "127.0.0.0/8 does not cover ::1")
        #expect(policy.refusal(ofHost: "[::1]") != nil)
        #expect(IPNetwork("10.0.0.0/33") == nil && IPNetwork("::/129") == nil && IPNetwork("a.b.c.d/8") == nil && IPNetwork("") == nil)
        #expect(IPNetwork("fe80::/10")?.contains(try #require(IPAddress("febf::1"))) == true)
        #expect(IPNetwork("fe80::/10")?.contains(try #require(IPAddress("fec0::1"))) == false)
        #expect(IPNetwork("0.0.0.0/0")?.contains(try #require(IPAddress("203.0.113.9"))) == true)
    }

    @Test func aNameIsJudgedByWhatItResolvesTo() {
        let reason = Self.none.refusal(ofHost: "localhost")
        #expect(reason?.contains("localhost resolves to 127.0.0.1 is a loopback address") == true, "\(reason ?? "-")")
        #expect(Self.none.refusal(ofHost: "no-such-host.invalid") == nil, "checked when it is used")
    }

    // MARK: config add / edit

    @Test(arguments: ["10.0.0.1", "::1", "169.254.169.254", "localhost"])
    func configAddRefusesAnInwardHostNamingTheAddress(host: String) throws {
        let env = try CtlEnvironment(delivery: ["allowed_networks = []"])
        let result = try env.ctl(
            "config", "add", "--tenant", "acme", "--name", "main", "--host", host, "--port", "25", "--security", "none",
            "--from-address", "news@acme.test")
        #expect(result.status != 0)
        let named = host == "localhost" ? "127.0.0.1" : host
        #expect(result.stderr.contains("--host") && result.stderr.contains(named), "\(result.output)")
        #expect(result.stderr.contains("allowed_networks"), "the fix is named: \(result.output)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.output)")
        #expect(try env.ctl("config", "show", "acme/main").status != 0, "nothing was stored")
    }

    @Test func listedNetworksMayBeUsedAndEditIsCheckedToo() throws {
        let env = try CtlEnvironment(delivery: [#"allowed_networks = ["127.0.0.0/8", "10.0.0.0/8"]"#])
        for (name, host) in [("local", "localhost"), ("private", "10.0.0.1"), ("loop", "127.0.0.1")] {
            let result = try env.ctl(
                "config", "add", "--tenant", "acme", "--name", name, "--host", host, "--port", "25", "--security", "none",
                "--from-address", "news@acme.test")
            #expect(result.status == 0, "\(host): \(result.output)")
        }
        let edited = try env.ctl("config", "edit", "acme/private", "--host", "169.254.169.254")
        #expect(edited.status != 0)
        #expect(edited.stderr.contains("169.254.169.254 is a link-local address"), "\(edited.output)")
        #expect(try env.json("config", "show", "acme/private")["host"] as? String == "10.0.0.1", "the edit was not stored")
    }

    // MARK: at connect time, after DNS resolution

    /// Drops loopback from the environment's config file: what an operator who never
    /// listed it has, for a configuration stored when it was (or whose name resolved elsewhere).
    func forbidLoopback(_ env: CtlEnvironment) throws {
        let text = try String(contentsOfFile: env.configPath, encoding: .utf8)
        let changed = text.replacingOccurrences(of: #"allowed_networks = ["127.0.0.0/8", "::1/128"]"#, with: "allowed_networks = []")
        try #require(changed != text)
        try changed.write(toFile: env.configPath, atomically: true, encoding: .utf8)
    }

    @Test func verifyAndTestAreRefusedAtConnectTime() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment()
        try #require(try env.addConfig(name: "main", port: server.port).status == 0)
        try forbidLoopback(env)
        let verify = try env.ctl("config", "verify", "acme/main")
        #expect(verify.status != 0)
        #expect(verify.stdout.contains("127.0.0.1 is a loopback address"), "\(verify.output)")
        let test = try env.ctl("config", "test", "acme/main", "--to", "someone@example.com")
        #expect(test.status != 0)
        #expect(test.stdout.contains("127.0.0.1 is a loopback address"), "\(test.output)")
        #expect(server.events().filter { $0 == "connect" }.isEmpty, "no connection was made: \(server.events())")
        #expect(server.messages().isEmpty)
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func theDaemonRefusesTheTenantsAddressAndTheRelayIsExempt(_ backend: Backend) throws {
        let tenant = try SMTPTestServer()
        let relay = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend, platformPort: relay.port)
        try #require(try env.addConfig(name: "main", port: tenant.port).status == 0)
        try forbidLoopback(env)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let id = try daemon.enqueue(subject: "inward")
        let row = try daemon.waitFor(id, .sent)
        #expect(row.route == .fallback, "the relay on 127.0.0.1 is the operator's own")
        #expect(tenant.messages().isEmpty)
        #expect(relay.messages().count == 1)
        let config = try env.json("config", "show", "acme/main")
        #expect(config["status"] as? String == "error")
        #expect((config["error_text"] as? String)?.contains("127.0.0.1 is a loopback address") == true, "\(config)")
        daemon.stop()
    }
}
