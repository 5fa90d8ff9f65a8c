import Foundation
import Testing

@testable import MailrouteCore

/// Several `mailrouted` on one PostgreSQL queue (SPEC §8), against real SMTP servers: each
/// row sent once when nothing fails, at most what a killed daemon had in flight twice, a
/// configuration's `max_connections` for the cluster, and a database that goes away and comes
/// back. Serialized: each starts several daemons, and the machine has two cores.
@Suite(.serialized) struct ScaleOutTests {
    /// `count` rows spread evenly over `tenants`, in one transaction, subjects `prefix N`.
    func enqueue(_ env: CtlEnvironment, _ count: Int, tenants: [String], subject prefix: String) throws {
        let list = tenants.map { "'\($0)'" }.joined(separator: ",")
        _ = try #require(env.psql).run(
            """
            INSERT INTO messages (tenant, category, rcpt_to, subject, text_body)
            SELECT (ARRAY[\(list)])[1 + g % \(tenants.count)], 'report', '["r@example.com"]', '\(prefix) ' || g, 'x'
            FROM generate_series(0, \(count - 1)) g;
            """)
    }

    func sent(_ env: CtlEnvironment) throws -> Int {
        Int(try #require(env.psql).value(PSQL.Script("SELECT count(*) FROM messages WHERE status = 'sent';"))) ?? -1
    }

    func value(_ env: CtlEnvironment, _ sql: String) throws -> String {
        try #require(env.psql).value(PSQL.Script(sql))
    }

    @Test func threeDaemonsSendEveryMessageExactlyOnce() throws {
        let sink = try SinkServer()
        let env = try CtlEnvironment(backend: .postgres)
        let tenants = ["acme", "globex", "initech"]
        for tenant in tenants {
            try env.addConfig(tenant: tenant, name: "main", port: sink.port, extra: ["--max-connections", "2"])
        }
        let daemons = (0..<3).map { _ in DaemonProcess(env: env) }
        for daemon in daemons { try daemon.start() }
        try enqueue(env, 3000, tenants: tenants, subject: "shared")
        #expect(waitUntil(timeout: 60) { (try? sent(env)) == 3000 })
        let subjects = sink.subjects()
        let counts = Dictionary(grouping: subjects, by: { $0 }).mapValues(\.count)
        #expect(subjects.count == 3000, "\(subjects.count) deliveries for 3,000 rows")
        #expect((0..<3000).allSatisfy { counts["shared \($0)"] == 1 }, "each exactly once")
        #expect(try value(env, "SELECT count(*) FROM attempts WHERE outcome = 'sent';") == "3000")
        // The work was shared: each configuration is driven by one daemon, and they are not all one's.
        let drivers = try value(env, "SELECT count(DISTINCT daemon) FROM config_owners;")
        #expect(Int(drivers) ?? 0 >= 2, "\(drivers) daemon(s) drove the three configurations")
        for daemon in daemons { #expect(daemon.stop() == 0) }
        #expect(try value(env, "SELECT count(*) FROM messages WHERE status = 'sending';") == "0")
    }

    @Test func aKilledDaemonsRowsAreSentByTheOthersWithDuplicatesAtMostItsInFlight() throws {
        let sink = try SinkServer()
        let env = try CtlEnvironment(backend: .postgres, queue: ["lease_s = 3"])
        try env.addConfig(name: "main", port: sink.port, extra: ["--max-connections", "4"])
        let victim = DaemonProcess(env: env), survivor = DaemonProcess(env: env)
        try enqueue(env, 2000, tenants: ["acme"], subject: "burst")
        try victim.start()
        #expect(waitUntil(timeout: 30) { (try? sent(env)) ?? 0 >= 100 })
        try survivor.start()
        // Whatever the victim holds when it dies: its rows in hand, its configuration.
        let owner = try value(env, "SELECT daemon FROM config_owners;")
        let killed = owner.contains(":\(victim.process!.processIdentifier):") ? victim : survivor
        let other = killed === victim ? survivor : victim
        killed.stop(SIGKILL)
        let inFlight = Int(try value(env, "SELECT count(*) FROM messages WHERE status = 'sending';")) ?? 0
        #expect(waitUntil(timeout: 60) { (try? sent(env)) == 2000 }, "the other daemon finished the burst")
        let subjects = sink.subjects()
        let counts = Dictionary(grouping: subjects, by: { $0 }).mapValues(\.count)
        #expect((0..<2000).allSatisfy { counts["burst \($0)", default: 0] >= 1 }, "every message arrived")
        let duplicates = subjects.count - counts.count
        #expect(duplicates <= inFlight, "\(duplicates) duplicates, \(inFlight) in flight at the kill")
        #expect(other.stop() == 0)
    }

    @Test func maxConnectionsHoldsForTheWholeCluster() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: .postgres)
        try env.addConfig(name: "main", port: server.port, extra: ["--max-connections", "2"])
        let daemons = (0..<3).map { _ in DaemonProcess(env: env) }
        for daemon in daemons { try daemon.start() }
        try enqueue(env, 300, tenants: ["acme"], subject: "limited")
        #expect(waitUntil(timeout: 60) { (try? sent(env)) == 300 })
        #expect(server.messages().count == 300)
        #expect(server.maxConcurrentConnections() <= 2, "the server saw \(server.maxConcurrentConnections()) at once")
        for daemon in daemons { daemon.stop() }
    }

    /// The poll is half a minute here: only a NOTIFY can bring these rows out within the wait,
    /// the first into a daemon that never worked, the next ones after it has drained and gone
    /// idle again (where a daemon that thought itself busy once stayed deaf until the poll).
    @Test func anIdleDaemonIsWokenByAnInsertNotThePoll() throws {
        let sink = try SinkServer()
        let env = try CtlEnvironment(backend: .postgres, queue: ["poll_interval_s = 30"])
        try env.addConfig(name: "main", port: sink.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        for round in 1...10 {
            try enqueue(env, 1, tenants: ["acme"], subject: "wake \(round)")
            let picked = waitUntil(timeout: 5) { (try? sent(env)) == round }
            #expect(picked, "round \(round) was picked up")
            if !picked { break }
            usleep(UInt32.random(in: 50_000...150_000))
        }
        #expect(daemon.stop() == 0)
    }

    /// One line naming the database and what is wrong, at once (the client's pool would retry
    /// for a minute), and never a password.
    @Test func aWrongURLOrAMissingDatabaseIsOneLine() throws {
        let env = try CtlEnvironment(backend: .postgres)
        let server = try PostgresTestServer.server()
        let config = try String(contentsOfFile: env.configPath, encoding: .utf8)
        for (url, says) in [
            ("postgres://mailroute@127.0.0.1:\(closedPort())/x?sslmode=disable", "cannot connect"),
            ("postgres://mailroute@127.0.0.1:\(server.port)/no_such_db?sslmode=disable", #"database "no_such_db" does not exist"#),
            ("postgres://nobody_here@127.0.0.1:\(server.port)/postgres?sslmode=disable", #"role "nobody_here" does not exist"#),
        ] {
            let edited = config.replacingOccurrences(
                of: #"url = "[^"]*""#, with: "url = \"\(url)\"", options: .regularExpression)
            try edited.write(toFile: env.configPath, atomically: true, encoding: .utf8)
            let started = Date()
            let result = try env.ctl("queue", "stats")
            #expect(result.status == 1)
            #expect(Date().timeIntervalSince(started) < 10, "at once")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(result.stderr)")
            #expect(result.stderr.contains("[queue] url postgres://") && result.stderr.contains(says), "\(result.stderr)")
            #expect(!result.stderr.contains(server.password))
        }
    }

    /// PostgreSQL of its own: stopping the shared one would fail the other tests.
    @Test func aDaemonRidesOutTheDatabaseGoingAway() throws {
        let cluster = try PrivateCluster()
        defer { cluster.stop() }
        let sink = try SinkServer()
        let env = try CtlEnvironment(backend: .postgres, queue: ["lease_s = 3"], postgres: cluster.server)
        try env.addConfig(name: "main", port: sink.port)
        let listener = try NotifyListener()
        let daemon = DaemonProcess(env: env)
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path])
        try enqueue(env, 200, tenants: ["acme"], subject: "before")
        #expect(waitUntil(timeout: 30) { (try? sent(env)) == 200 })

        try cluster.pause()
        #expect(waitUntil(timeout: 20) { daemon.log().contains("database unreachable") }, "it says so in its log")
        #expect(waitUntil(timeout: 20) { listener.messages.contains { $0.contains("STATUS=queue database unreachable") } }, "and in STATUS")
        #expect(daemon.process?.isRunning == true, "it did not crash")
        try cluster.resume()
        try enqueue(env, 200, tenants: ["acme"], subject: "after")
        #expect(waitUntil(timeout: 60) { (try? sent(env)) == 400 }, "it carried on")
        #expect(waitUntil(timeout: 20) { daemon.log().contains("queue database reachable again") })
        #expect(try value(env, "SELECT count(*) FROM messages WHERE status = 'sending';") == "0")
        let subjects = Set(sink.subjects())
        #expect((0..<200).allSatisfy { subjects.contains("before \($0)") && subjects.contains("after \($0)") }, "nothing lost")
        #expect(daemon.stop() == 0)
    }
}
