import Foundation
import GRDB
import Logging
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing

@testable import MailrouteCore

/// The engine in-process: a real queue file, the real dispatcher, a fake transport. Fast
/// checks of the engine's decisions beside the subprocess tests against real servers.
@Suite struct EngineTests {
    let store: QueueStore
    let transport = FakeTransport()
    var settings = MailrouteConfiguration()

    init() throws {
        store = try QueueStore(path: Paths.temporaryDirectory("engine").appendingPathComponent("q.db").path)
        settings.platform.fromAddress = "platform@mailroute.test"
        settings.delivery.heloName = "mailroute.test"
        settings.delivery.retryInitialSeconds = 0.05
        settings.delivery.retryMaxSeconds = 0.05
        settings.dkim.keysDirectory = "/nonexistent"
    }

    @discardableResult
    func addConfig(_ tenant: String = "acme", _ name: String = "main", maxConnections: Int? = nil, fallback: FallbackPolicy = .platform) throws -> SMTPConfigRecord {
        var record = SMTPConfigRecord(tenant: tenant, name: name, host: "smtp.\(tenant).test", fromAddress: "\(name)@\(tenant).test")
        record.maxConnections = maxConnections
        record.fallback = fallback
        return try store.insertConfig(record)
    }

    func enqueue(_ count: Int, tenant: String? = "acme") throws -> [Int64] {
        try store.pool.write { db in
            try (0..<count).map { i in
                try db.execute(
                    sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) VALUES (?, 'report', '[\"r@example.com\"]', ?, 'x')",
                    arguments: [tenant, "m\(i)"])
                return db.lastInsertedRowID
            }
        }
    }

    func rows(_ ids: [Int64]) throws -> [MessageRecord] {
        try store.pool.read { db in try MessageRecord.filter(ids.contains(MessageRecord.Columns.id)).order(Column("id")).fetchAll(db) }
    }

    /// Runs the dispatcher until `body` returns, then shuts it down gracefully, as SIGTERM would.
    /// On an executor of its own: the other suites' subprocess tests block the two threads of
    /// the cooperative pool for seconds at a time, which the daemon itself never has to share.
    func running(_ body: @Sendable () async throws -> Void) async throws {
        let dispatcher = try Dispatcher(
            settings: settings, store: store, secrets: nil, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            transport: transport)
        try await withTaskExecutorPreference(EngineExecutor.shared) {
            try await testGracefulShutdown { trigger in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await dispatcher.run() }
                    try await body()
                    trigger.triggerGracefulShutdown()
                    try await group.waitForAll()
                }
            }
        }
    }

    /// Polls a condition on the queue (async reads: the cooperative pool has two threads here).
    func until(_ timeout: Double = 10, _ condition: @escaping @Sendable (Database) throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try await store.pool.read(condition) { return true }
            try await Task.sleep(for: .milliseconds(5))
        }
        return try await store.pool.read(condition)
    }

    static func allSent(_ ids: [Int64]) -> @Sendable (Database) throws -> Bool {
        { db in try MessageRecord.filter(ids.contains(MessageRecord.Columns.id)).filter(Column("status") != "sent").fetchCount(db) == 0 }
    }

    @Test func aTenantsMailLeavesThroughItsPoolAndTheRunEndsOnShutdown() async throws {
        try addConfig()
        let ids = try enqueue(20)
        try await running {
            let done = try await until(10, Self.allSent(ids))
            #expect(done)
        }
        #expect(transport.sends(to: "acme/main").count == 20)
        #expect(transport.sends(to: "platform").isEmpty)
        let row = try #require(try rows(ids).first)
        #expect(row.route == .default)
        #expect(row.smtpResponse == "250 2.0.0 Ok: queued as FAKE")
    }

    @Test func aLoginRefusedTripsOnceAndTheRestGoStraightToTheRelay() async throws {
        try addConfig(maxConnections: 1)
        transport.set("acme/main", .fail(DeliveryError(kind: .authFailed, smtpCode: 535, text: "535 5.7.8 no", isTemporary: false)))
        let ids = try enqueue(5)
        try await running {
            let done = try await until(10, Self.allSent(ids))
            #expect(done)
        }
        #expect(try rows(ids).allSatisfy { $0.route == .fallback })
        // A pool of one: the first try trips it; what was claimed beside it may have tried too.
        #expect(transport.sends(to: "acme/main").count <= 2)
        #expect(transport.sends(to: "platform").count == 5)
        let config = try #require(try store.config(tenant: "acme", name: "main"))
        #expect(config.status == .error)
        #expect(config.errorKind == .authFailed)
        #expect(config.nextProbeAt != nil, "a first probe is scheduled")
        let attempts = try await store.pool.read { db in try AttemptRecord.filter(Column("message_id") == ids[0]).order(Column("attempt")).fetchAll(db) }
        #expect(attempts.map(\.outcome) == [.fallback, .sent])
    }

    @Test func silenceTripsOnlyAfterTheBreakerCount() async throws {
        try addConfig(maxConnections: 1)
        let silence = DeliveryError(kind: .connectTimeout, text: "Operation timed out after 15000 milliseconds with 0 bytes received", isTemporary: true)
        transport.set("acme/main", .failThenAccept(silence, times: 2))
        let ids = try enqueue(1)
        try await running {
            let done = try await until(10, Self.allSent(ids))
            let row = try rows(ids).first
            #expect(done, "\(String(describing: row?.status)) attempts \(row?.attempts ?? -1) next \((row?.nextAttemptAt ?? 0) - Date().timeIntervalSince1970) lease \(String(describing: row?.leaseUntil)) sends \(transport.recorded.count)")
        }
        #expect(try rows(ids).first?.route == .default, "two timeouts of three do not trip")
        #expect(try store.config(tenant: "acme", name: "main")?.status == .verified)
        #expect(transport.sends(to: "platform").isEmpty)
    }

    @Test func gracefulShutdownFinishesTheSendInHandAndGivesBackTheRest() async throws {
        try addConfig(maxConnections: 1)
        transport.set("acme/main", .hold)
        let ids = try enqueue(5)
        let transport = self.transport
        try await running {
            let deadline = Date().addingTimeInterval(10)
            while transport.holding < 1 && Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
            let done = transport.holding >= 1
            #expect(done)
            // Shutdown begins while the sends are held; they are let go a moment later.
            Task {
                try await Task.sleep(for: .milliseconds(100))
                transport.release()
            }
        }
        let statuses = try rows(ids).map(\.status)
        #expect(statuses.filter { $0 == .sent }.count == transport.sends(to: "acme/main").count)
        #expect(statuses.allSatisfy { $0 == .sent || $0 == .queued }, "nothing left sending: \(statuses)")
        #expect(statuses.contains(.sent))
    }
}

/// Runs jobs on Dispatch's ordinary worker threads rather than the cooperative pool.
final class EngineExecutor: TaskExecutor, @unchecked Sendable {
    static let shared = EngineExecutor()
    private let queue = DispatchQueue(label: "mailroute-engine-tests", attributes: .concurrent)

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
