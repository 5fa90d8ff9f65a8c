import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// A `mailrouted` process on a `CtlEnvironment`, with helpers to enqueue as a service would
/// and to wait on the queue's state.
final class DaemonProcess: @unchecked Sendable {
    let env: CtlEnvironment
    private(set) var process: Process?
    var logPath: String { env.directory.appendingPathComponent("mailrouted.log").path }

    init(env: CtlEnvironment) {
        self.env = env
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Starts the daemon and waits until it says it started.
    func start(environment extra: [String: String] = [:]) throws {
        let process = Process()
        process.executableURL = Paths.mailrouted
        process.arguments = ["--config", env.configPath]
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "NOTIFY_SOCKET")
        environment.removeValue(forKey: "WATCHDOG_USEC")
        environment.removeValue(forKey: "WATCHDOG_PID")
        for (k, v) in extra { environment[k] = v }
        process.environment = environment
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardError = log
        process.standardOutput = log
        let before = log.offsetInFile
        try process.run()
        self.process = process
        let started = waitUntil(timeout: 15) { self.log(from: before).contains("started") || !process.isRunning }
        guard started, process.isRunning else { throw DaemonError.didNotStart(self.log()) }
    }

    func log(from offset: UInt64 = 0) -> String {
        guard let data = FileManager.default.contents(atPath: logPath), UInt64(data.count) >= offset else { return "" }
        return String(decoding: data[Int(offset)...], as: UTF8.self)
    }

    func signal(_ signal: Int32) {
        if let process { kill(process.processIdentifier, signal) }
    }

    /// Sends `signal` and waits for the exit; returns the exit status.
    @discardableResult
    func stop(_ signal: Int32 = SIGTERM, timeout: TimeInterval = 30) -> Int32 {
        guard let process else { return -1 }
        kill(process.processIdentifier, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    // MARK: - The queue, as an enqueuing service sees it

    private static let queueLock = NSLock()
    nonisolated(unsafe) private static var queues: [String: DatabaseQueue] = [:]

    /// One plain connection per database, as an enqueuer would hold (`.sqlite`; `psql` on PostgreSQL).
    var db: DatabaseQueue {
        precondition(env.backend == .sqlite, "db is the SQLite file; use psql on \(env.backend)")
        return Self.queueLock.withLock {
            if let q = Self.queues[env.databasePath] { return q }
            _ = try! QueueStore(path: env.databasePath)  // migrated, as the daemon would leave it
            var configuration = Configuration()
            configuration.busyMode = .timeout(10)
            let q = try! DatabaseQueue(path: env.databasePath, configuration: configuration)
            Self.queues[env.databasePath] = q
            return q
        }
    }

    /// The test's PostgreSQL database through `psql`, as an enqueuer on that backend (`.postgres` only).
    var psql: PSQL {
        guard let psql = env.psql else { preconditionFailure("\(env.backend) has no psql") }
        return psql
    }

    @discardableResult
    func enqueue(
        tenant: String? = "acme", to: [String] = ["rcpt@example.com"], subject: String = "Hello", text: String? = "Body",
        html: String? = nil, category: String = "report", priority: Int? = nil, advertiser: String? = nil, cname: String? = nil,
        mailFrom: String? = nil, sendAt: Double? = nil, expiresAt: Double? = nil, cc: [String]? = nil,
        headers: String? = nil
    ) throws -> Int64 {
        if env.backend == .postgres {
            var s = PSQL.Script()
            s.append(
                """
                INSERT INTO messages (tenant, category, rcpt_to, cc, subject, text_body, html_body, priority, advertiser, cname,
                                      mail_from, send_at, expires_at, headers)
                VALUES (\(s.text(tenant)), \(s.text(category)), \(s.text(jsonArray(to))), \(s.text(cc.map(jsonArray))),
                        \(s.text(subject)), \(s.text(text)), \(s.text(html)), \(s.number(priority)), \(s.text(advertiser)),
                        \(s.text(cname)), \(s.text(mailFrom)), \(s.number(sendAt)), \(s.number(expiresAt)), \(s.text(headers)))
                RETURNING id;

                """)
            return try psql.int64(s)
        }
        return try db.write { db in
            try db.execute(
                sql: """
                    INSERT INTO messages (tenant, category, rcpt_to, cc, subject, text_body, html_body, priority, advertiser, cname,
                                          mail_from, send_at, expires_at, headers)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    tenant, category, jsonArray(to), cc.map(jsonArray), subject, text, html, priority, advertiser, cname,
                    mailFrom, sendAt, expiresAt, headers,
                ])
            return db.lastInsertedRowID
        }
    }

    /// `count` plain messages for `acme` in one transaction, subjects `prefix N`, as a burst from a service.
    func enqueueMany(_ count: Int, subject prefix: String, priority: Int? = nil, category: String = "report") throws {
        if env.backend == .postgres {
            var s = PSQL.Script("BEGIN;\n")
            let categoryLiteral = s.text(category)
            for i in 0..<count {
                s.append(
                    """
                    INSERT INTO messages (tenant, category, rcpt_to, subject, text_body, priority)
                    VALUES ('acme', \(categoryLiteral), '["r@example.com"]', \(s.text("\(prefix) \(i)")), 'x', \(s.number(priority)));

                    """)
            }
            s.append("COMMIT;\n")
            try psql.run(s)
            return
        }
        try db.write { db in
            for i in 0..<count {
                try db.execute(
                    sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body, priority) VALUES ('acme', ?, '[\"r@example.com\"]', ?, 'x', ?)",
                    arguments: [category, "\(prefix) \(i)", priority])
            }
        }
    }

    func row(_ id: Int64) throws -> MessageRecord {
        if env.backend == .postgres {
            guard let row = try psql.message(id) else { throw DaemonError.noSuchRow(id) }
            return row
        }
        return try db.read { db in try MessageRecord.fetchOne(db, key: id)! }
    }

    /// The row, or nil once it is gone (purged).
    func rowIfPresent(_ id: Int64) throws -> MessageRecord? {
        if env.backend == .postgres { return try psql.message(id) }
        return try db.read { db in try MessageRecord.fetchOne(db, key: id) }
    }

    func attempts(_ id: Int64) throws -> [AttemptRecord] {
        if env.backend == .postgres { return try psql.attempts(id) }
        return try db.read { db in
            try AttemptRecord.filter(Column("message_id") == id).order(Column("attempt")).fetchAll(db)
        }
    }

    func count(status: MessageStatus) throws -> Int {
        if env.backend == .postgres { return try psql.count(status: status) }
        return try db.read { db in try MessageRecord.filter(Column("status") == status.rawValue).fetchCount(db) }
    }

    /// Waits (bounded) until the row reaches one of `statuses`; returns it either way.
    @discardableResult
    func waitFor(_ id: Int64, _ statuses: MessageStatus..., timeout: TimeInterval = 20) throws -> MessageRecord {
        _ = try waitUntil(timeout: timeout) { statuses.contains(try row(id).status) }
        return try row(id)
    }

    func config(_ tenant: String, _ name: String) throws -> SMTPConfigRecord {
        if env.backend == .postgres {
            guard let config = try psql.config(tenant: tenant, name: name) else { throw DaemonError.noSuchConfig("\(tenant)/\(name)") }
            return config
        }
        return try env.store().config(tenant: tenant, name: name)!
    }
}

func jsonArray(_ list: [String]) -> String {
    String(decoding: try! JSONSerialization.data(withJSONObject: list), as: UTF8.self)
}

enum DaemonError: Error {
    case didNotStart(String)
    case noSuchRow(Int64)
    case noSuchConfig(String)
}
