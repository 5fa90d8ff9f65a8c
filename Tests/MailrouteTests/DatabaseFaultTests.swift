import Foundation
import GRDB
import Synchronization
import Testing

@testable import MailrouteCore

/// What the daemon does when the queue's database misbehaves under it (issue 12, item 3): a
/// schema newer than the binary, another writer holding the lock for seconds, a full disk.
/// Real processes, real files, bounded waits.
@Suite struct DatabaseFaultTests {
    /// The lock and disk-full tests are synchronous on purpose: what they do must happen on
    /// time (a lock released after exactly its length, a disk filled while three messages are in
    /// the server's hands), and an async test waits for a cooperative thread to resume it, which
    /// other suites' subprocess tests can hold for seconds (seen: the disk filled after the three
    /// were sent). Blocking, a test keeps the thread it has.
    static func sleep(until date: Date) {
        let left = date.timeIntervalSinceNow
        if left > 0 { usleep(UInt32(left * 1_000_000)) }
    }

    // MARK: - A schema newer than the binary

    @Test(arguments: Backend.allCases) func aSchemaNewerThanTheBinaryIsRefusedNamingBothMigrations(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        #expect(try env.ctl("migrate").status == 0)
        let binary: String
        switch backend {
        case .sqlite:
            binary = Migrations.migrator.migrations.last!
            let db = try DatabaseQueue(path: env.databasePath)
            try db.write { try $0.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99-from-the-future')") }
            try db.close()
        case .postgres:
            binary = PostgresSchema.migrations.last!.name
            _ = try env.psql!.run("INSERT INTO mailroute_migrations (name, applied_at) VALUES ('v99-from-the-future', 4102444800);")
        }

        for command in [["queue", "list"], ["migrate"], ["config", "list"]] {
            let result = try env.ctl(command)
            #expect(result.status == 1, "\(command): \(result.output)")
            #expect(result.stdout.isEmpty)
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one line: \(result.stderr)")
            #expect(result.stderr.contains("v99-from-the-future") && result.stderr.contains(binary), "both named: \(result.stderr)")
            #expect(result.stderr.contains("upgrade mailroute"))
        }

        let daemon = try runProcess(Paths.mailrouted, ["--config", env.configPath], timeout: 30)
        #expect(daemon.status != 0, "it does not start: \(daemon.output)")
        #expect(daemon.output.contains("v99-from-the-future") && daemon.output.contains(binary), "\(daemon.output)")
        #expect(!daemon.output.contains("started"))

        // Refused, not touched: the newer binary finds its database as it left it.
        switch backend {
        case .sqlite:
            let db = try DatabaseQueue(path: env.databasePath)
            #expect(try db.read { try String.fetchSet($0, sql: "SELECT identifier FROM grdb_migrations") }.contains("v99-from-the-future"))
            try db.close()
        case .postgres:
            #expect(try env.psql!.value(PSQL.Script("SELECT count(*) FROM mailroute_migrations WHERE name = 'v99-from-the-future';")) == "1")
        }
    }

    // MARK: - Another writer holds the lock

    /// A bulk load or a backup holds SQLite's write lock while rows fall due: for 6 s, the daemon
    /// waits (its busy wait is 10 s per statement); for 15 s, a claim gives up once and the next
    /// waits on. Either way it says so once, and once that it let go, and delivers each row once.
    @Test(arguments: [6.0, 15.0]) func aWriterHoldingTheLockForSecondsIsWaitedForAndSaidOnce(holding seconds: Double) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(platformPort: server.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        defer { daemon.stop() }
        let first = try daemon.enqueue(tenant: nil, subject: "before the lock")
        #expect(waitUntil(timeout: 20) { (try? daemon.row(first).status) == .sent })

        // Due a second into the lock (committed in one transaction just before it): the claim of
        // them waits for nearly all of it.
        let holder = try DatabaseQueue(path: env.databasePath)
        let soon = Date().timeIntervalSince1970 + 1
        let due = try holder.write { db in
            try (0..<5).map { i -> Int64 in
                try db.execute(
                    sql: "INSERT INTO messages (category, rcpt_to, subject, text_body, send_at) VALUES ('report', '[\"r@example.com\"]', ?, 'x', ?)",
                    arguments: ["due during the lock \(i)", soon])
                return db.lastInsertedRowID
            }
        }
        // Held for exactly `seconds`.
        let said = Mutex(false)
        let inside = try { () -> [Int64] in
            try holder.writeWithoutTransaction { db in
                let began = Date()
                try db.execute(sql: "BEGIN IMMEDIATE")
                let ids = try (0..<5).map { i -> Int64 in
                    try db.execute(
                        sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('report', '[\"r@example.com\"]', ?, 'x')",
                        arguments: ["committed with the lock \(i)"])
                    return db.lastInsertedRowID
                }
                while Date().timeIntervalSince(began) < seconds {
                    if daemon.log().contains("queue database locked by another connection") { said.withLock { $0 = true } }
                    usleep(20_000)
                }
                try db.execute(sql: "COMMIT")
                return ids
            }
        }()
        try holder.close()
        #expect(said.withLock { $0 }, "said while it waits: \(daemon.log())")

        _ = waitUntil(timeout: 20) { (try? (due + inside).allSatisfy { try daemon.row($0).status == .sent }) == true }
        #expect(try (due + inside).allSatisfy { try daemon.row($0).status == .sent })
        let subjects = server.messages().compactMap { $0.header("Subject") }
        #expect(subjects.count == 11, "each once: \(subjects)")
        #expect(Set(subjects).count == subjects.count, "nothing twice: \(subjects)")

        let log = daemon.log()
        #expect(log.components(separatedBy: "queue database locked by another connection; waiting for it").count - 1 == 1, "once, not once per claim: \(log)")
        #expect(log.components(separatedBy: "queue database lock released").count - 1 == 1, "and once that it let go: \(log)")
        #expect(!log.contains("unreachable"), "a lock, not a lost database: \(log)")
        if seconds > 10 {
            #expect(log.components(separatedBy: "claiming stopped").count - 1 == 1, "past the busy wait, once: \(log)")
            #expect(log.components(separatedBy: "queue database writable again").count - 1 == 1, "\(log)")
        } else {
            #expect(!log.contains("claiming stopped"), "waited, not failed: \(log)")
        }
        #expect(!log.contains("could not record"))
    }

    // MARK: - The disk fills

    /// The queue on a 6 MB tmpfs that the test fills while three messages are in the server's
    /// hands (it answers DATA after 3 s) and three more fall due. The daemon says so in its log
    /// and STATUS, claims nothing while it cannot write, keeps the three outcomes it could not
    /// record (they are not sent again), and carries on by itself once the space is back.
    @Test(.enabled(if: SmallFilesystem.unavailable == nil, "\(SmallFilesystem.unavailable ?? "")"))
    func aFullDiskStopsClaimingKeepsOutcomesAndRecoversByItself() throws {
        let fs = try SmallFilesystem(megabytes: 6)
        let server = try SMTPTestServer.fault("--delay-data", "4")
        let env = try CtlEnvironment(platformPort: server.port)
        let databasePath = fs.path + "/queue.db"
        let toml = try String(contentsOfFile: env.configPath, encoding: .utf8)
        try toml.replacingOccurrences(of: #"path = "queue.db""#, with: #"path = "\#(databasePath)""#)
            .write(toFile: env.configPath, atomically: true, encoding: .utf8)
        let listener = try NotifyListener()
        let daemon = DaemonProcess(env: env)
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path])
        defer { daemon.stop() }

        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        let db = try DatabaseQueue(path: databasePath, configuration: configuration)
        defer { try? db.close() }
        func status(_ id: Int64) throws -> MessageStatus? {
            try db.read { try String.fetchOne($0, sql: "SELECT status FROM messages WHERE id = ?", arguments: [id]) }
                .flatMap(MessageStatus.init(rawValue:))
        }
        let later = Date().timeIntervalSince1970 + 4
        let (inFlight, dueLater) = try db.write { db -> ([Int64], [Int64]) in
            func insert(_ subject: String, sendAt: Double?) throws -> Int64 {
                try db.execute(
                    sql: "INSERT INTO messages (category, rcpt_to, subject, text_body, send_at) VALUES ('report', '[\"r@example.com\"]', ?, 'x', ?)",
                    arguments: [subject, sendAt])
                return db.lastInsertedRowID
            }
            return (try (0..<3).map { try insert("in flight \($0)", sendAt: nil) }, try (0..<3).map { try insert("due later \($0)", sendAt: later) })
        }
        // Inside the 4 s the server holds them: once the three are in its hands, an empty WAL
        // (the next commit must grow it) on a filesystem with no room.
        let claimed = try { () -> Bool in
            let deadline = Date().addingTimeInterval(4)
            while Date() < deadline, (try? inFlight.allSatisfy { try status($0) == .sending }) != true { usleep(20_000) }
            let claimed = try inFlight.allSatisfy { try status($0) == .sending }
            try db.writeWithoutTransaction { try $0.checkpoint(.truncate) }
            fs.fill()
            return claimed
        }()
        #expect(claimed, "claimed and sending when the disk filled")

        #expect(waitUntil(timeout: 15) { daemon.log().contains("DISK FULL") }, "loud in the log: \(daemon.log())")
        #expect(waitUntil(timeout: 10) { listener.messages.contains { $0.contains("STATUS=DISK FULL") } }, "and in STATUS: \(listener.messages)")
        // The three were sent; their `sent` waits in memory. The later three fall due and stay.
        #expect(waitUntil(timeout: 15) { server.messages().count == 3 })
        Self.sleep(until: Date(timeIntervalSince1970: later + 3))
        #expect(server.messages().count == 3, "nothing claimed while the disk is full")
        #expect(try dueLater.allSatisfy { try status($0) == .queued })
        #expect(try inFlight.allSatisfy { try status($0) == .sending }, "outcomes not written, and not lost either")

        fs.free()
        let everything = inFlight + dueLater
        #expect(waitUntil(timeout: 30) { (try? everything.allSatisfy { try status($0) == .sent }) == true }, "by itself: \(daemon.log())")
        let subjects = server.messages().compactMap { $0.header("Subject") }
        #expect(subjects.count == 6 && Set(subjects).count == 6, "each once: \(subjects)")
        let log = daemon.log()
        #expect(log.components(separatedBy: "DISK FULL").count - 1 == 1, "said once: \(log)")
        #expect(log.contains("queue database writable again"))
        #expect(!log.contains("could not record"), "no outcome given up: \(log)")
        #expect(waitUntil(timeout: 10) { listener.messages.last { $0.contains("STATUS=") }.map { !$0.contains("DISK FULL") } ?? false },
                "STATUS clears: \(listener.messages.suffix(3))")
    }
}
