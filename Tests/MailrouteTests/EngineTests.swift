import Foundation
import GRDB
import Logging
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing

@testable import MailrouteCore

/// The engine in-process: a real queue (a file, or a database on the test PostgreSQL), the
/// real dispatcher, a fake transport. Fast checks of the engine's decisions beside the
/// subprocess tests against real servers. Every case runs on both backends.
@Suite struct EngineTests {
    /// One case's queue, dispatcher settings and transport.
    struct Engine: Sendable {
        let store: any QueueBackend
        let transport: FakeTransport
        let settings: MailrouteConfiguration

        @discardableResult
        func addConfig(_ tenant: String = "acme", _ name: String = "main", maxConnections: Int? = nil, fallback: FallbackPolicy = .platform) async throws -> SMTPConfigRecord {
            var record = SMTPConfigRecord(tenant: tenant, name: name, host: "smtp.\(tenant).test", fromAddress: "\(name)@\(tenant).test")
            record.maxConnections = maxConnections
            record.fallback = fallback
            return try await store.insertConfig(record)
        }

        /// Through the store's own `enqueue` (as `mailroutectl enqueue` writes rows), on either backend.
        func enqueue(_ count: Int, tenant: String? = "acme") async throws -> [Int64] {
            var ids: [Int64] = []
            for i in 0..<count {
                var message = MessageRecord(category: "report", rcptTo: #"["r@example.com"]"#, subject: "m\(i)")
                message.tenant = tenant
                message.textBody = "x"
                ids.append(try await store.enqueue(message, attachments: []))
            }
            return ids
        }

        func rows(_ ids: [Int64]) async throws -> [MessageRecord] {
            let wanted = Set(ids)
            return try await store.messages(MessageFilter(limit: 10_000))
                .filter { wanted.contains($0.id ?? -1) }
                .sorted { ($0.id ?? 0) < ($1.id ?? 0) }
        }

        func attempts(_ id: Int64) async throws -> [AttemptRecord] {
            try await store.message(id: id)?.1 ?? []
        }

        /// Runs the dispatcher until `body` returns, then shuts it down gracefully, as SIGTERM would.
        /// On an executor of its own: the other suites' subprocess tests block the two threads of
        /// the cooperative pool for seconds at a time, which the daemon itself never has to share.
        func running(metrics: MailrouteMetrics? = nil, _ body: @Sendable () async throws -> Void) async throws {
            let dispatcher = try Dispatcher(
                settings: settings, store: store, secrets: nil, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                transport: transport, metrics: metrics)
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
        func until(_ timeout: Double = 10, _ condition: @escaping @Sendable (Engine) async throws -> Bool) async throws -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if try await condition(self) { return true }
                try await Task.sleep(for: .milliseconds(5))
            }
            return try await condition(self)
        }

        static func allSent(_ ids: [Int64]) -> @Sendable (Engine) async throws -> Bool {
            { engine in try await engine.rows(ids).allSatisfy { $0.status == .sent } }
        }
    }

    /// A fresh queue on `backend` for the length of `body`. On PostgreSQL the client's
    /// connections run in a child task of `QueueBackends.with`, kept, like the dispatcher, on
    /// an executor of its own.
    func withEngine(
        _ backend: Backend, configure: (inout MailrouteConfiguration) -> Void = { _ in }, _ body: @Sendable (Engine) async throws -> Void
    ) async throws {
        var settings = MailrouteConfiguration()
        settings.platform.fromAddress = "platform@mailroute.test"
        settings.delivery.heloName = "mailroute.test"
        settings.delivery.retryInitialSeconds = 0.05
        settings.delivery.retryMaxSeconds = 0.05
        settings.dkim.keysDirectory = "/nonexistent"
        let directory = Paths.temporaryDirectory("engine")
        switch backend {
        case .sqlite:
            settings.queue.path = directory.appendingPathComponent("q.db").path
        case .postgres:
            let database = try PostgresTestServer.freshDatabaseSync()
            let passwordFile = directory.appendingPathComponent("pg.password")
            try database.psql.password.write(to: passwordFile, atomically: true, encoding: .utf8)
            settings.queue.backend = .postgres
            settings.queue.url = database.url
            settings.queue.passwordFile = passwordFile.path
        }
        configure(&settings)
        let transport = FakeTransport()
        try await withTaskExecutorPreference(EngineExecutor.shared) { [settings] in
            // In-process: other suites' subprocess tests block the cooperative threads that the
            // store's bounded calls run on, for seconds at a time; the daemon's bound is not tested here.
            PostgresStore.deadline = .seconds(60)
            try await QueueBackends.with(settings.queue, logger: PostgresTestServer.logger) { store in
                try await body(Engine(store: store, transport: transport, settings: settings))
            }
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func aTenantsMailLeavesThroughItsPoolAndTheRunEndsOnShutdown(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig()
            let ids = try await e.enqueue(20)
            try await e.running {
                let done = try await e.until(10, Engine.allSent(ids))
                #expect(done)
            }
            #expect(e.transport.sends(to: "acme/main").count == 20)
            #expect(e.transport.sends(to: "platform").isEmpty)
            let row = try #require(try await e.rows(ids).first)
            #expect(row.route == .default)
            #expect(row.smtpResponse == "250 2.0.0 Ok: queued as FAKE")
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func aLoginRefusedTripsOnceAndTheRestGoStraightToTheRelay(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig(maxConnections: 1)
            e.transport.set("acme/main", .fail(DeliveryError(kind: .authFailed, smtpCode: 535, text: "535 5.7.8 no", isTemporary: false)))
            let ids = try await e.enqueue(5)
            try await e.running {
                let done = try await e.until(10, Engine.allSent(ids))
                #expect(done)
            }
            #expect(try await e.rows(ids).allSatisfy { $0.route == .fallback })
            // A pool of one: the first try trips it; what was claimed beside it may have tried too.
            #expect(e.transport.sends(to: "acme/main").count <= 2)
            #expect(e.transport.sends(to: "platform").count == 5)
            let config = try #require(try await e.store.config(tenant: "acme", name: "main"))
            #expect(config.status == .error)
            #expect(config.errorKind == .authFailed)
            #expect(config.nextProbeAt != nil, "a first probe is scheduled")
            // Whichever of the two in hand reached the connection first tripped it (on a loaded
            // machine not always the first claimed); the others went straight to the relay.
            var histories: [[AttemptOutcome]] = []
            for id in ids { histories.append(try await e.attempts(id).map(\.outcome)) }
            #expect(histories.contains([.fallback, .sent]), "\(histories)")
            #expect(histories.allSatisfy { $0 == [.fallback, .sent] || $0 == [.sent] }, "\(histories)")
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func silenceTripsOnlyAfterTheBreakerCount(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig(maxConnections: 1)
            let silence = DeliveryError(kind: .connectTimeout, text: "Operation timed out after 15000 milliseconds with 0 bytes received", isTemporary: true)
            e.transport.set("acme/main", .failThenAccept(silence, times: 2))
            let ids = try await e.enqueue(1)
            try await e.running {
                let done = try await e.until(10, Engine.allSent(ids))
                let row = try await e.rows(ids).first
                #expect(done, "\(String(describing: row?.status)) attempts \(row?.attempts ?? -1) next \((row?.nextAttemptAt ?? 0) - Date().timeIntervalSince1970) lease \(String(describing: row?.leaseUntil)) sends \(e.transport.recorded.count)")
            }
            #expect(try await e.rows(ids).first?.route == .default, "two timeouts of three do not trip")
            #expect(try await e.store.config(tenant: "acme", name: "main")?.status == .verified)
            #expect(e.transport.sends(to: "platform").isEmpty)
        }
    }

    // MARK: Nothing waits forever (SPEC §4): a lifetime of seconds, in each state a message waits in

    static func lifetime(_ settings: inout MailrouteConfiguration) {
        settings.delivery.maxQueueLifetimeSeconds = 2.5
        settings.delivery.maxAttempts = 1000
    }

    static func expired(_ ids: [Int64]) -> @Sendable (Engine) async throws -> Bool {
        { engine in try await engine.rows(ids).allSatisfy { $0.status == .expired } }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func aMessageThatIsOnlyEverDeferredExpiresAtTheLifetime(_ backend: Backend) async throws {
        try await withEngine(backend, configure: Self.lifetime) { e in
            try await e.addConfig()
            e.transport.set("acme/main", .fail(DeliveryError(kind: .temporaryFailure, smtpCode: 451, text: "451 4.3.0 try later", isTemporary: true)))
            let ids = try await e.enqueue(1)
            try await e.running {
                let done = try await e.until(15, Self.expired(ids))
                #expect(done)
            }
            let row = try #require(try await e.rows(ids).first)
            #expect(row.lastErrorKind == "expired")
            #expect(row.lastError?.contains("max_queue_lifetime_s (2.5 s)") == true, "\(row.lastError ?? "-")")
            // Under a full suite's load the first claim can come after the deadline: then it was
            // never tried, which is right too. Once tried, the reason says what it waited for.
            if try await !e.attempts(ids[0]).isEmpty {
                #expect(row.lastError?.contains("451 4.3.0 try later") == true, "what it last waited for")
            }
        }
    }

    /// The issue's report: with `fallback = none` and a login the server refuses, the message
    /// was re-deferred to each cool-down for ever.
    @Test(arguments: [Backend.sqlite, .postgres])
    func aConfigurationThatStaysDownWithNoFallbackDoesNotHoldItsMailForever(_ backend: Backend) async throws {
        let settings: (inout MailrouteConfiguration) -> Void = { settings in
            Self.lifetime(&settings)
            settings.delivery.cooldownSeconds = 0.2
        }
        try await withEngine(backend, configure: settings) { e in
            try await e.addConfig(fallback: .none)
            e.transport.set("acme/main", .fail(DeliveryError(kind: .authFailed, smtpCode: 535, text: "535 5.7.8 no", isTemporary: false)))
            let ids = try await e.enqueue(3)
            try await e.running {
                let done = try await e.until(15, Self.expired(ids))
                #expect(done)
            }
            for row in try await e.rows(ids) {
                #expect(row.lastError?.contains("max_queue_lifetime_s") == true, "\(row.lastError ?? "-")")
            }
            #expect(e.transport.sends(to: "platform").isEmpty, "fallback none")
            // On a machine busy enough that the first claim comes after the deadline nothing is
            // tried, which is right too; once tried, the configuration is down.
            let config = try await e.store.config(tenant: "acme", name: "main")
            if !e.transport.sends(to: "acme/main").isEmpty {
                #expect(config?.status == .error, "\(String(describing: config?.status)) \(config?.errorText ?? "-")")
            }
            // Not tried while down: only the first try and the probes reached the server.
            #expect(e.transport.sends(to: "acme/main").count < 10)
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func mailWaitingForABusyPoolExpiresAndARetryGivesItTimeAgain(_ backend: Backend) async throws {
        try await withEngine(backend, configure: Self.lifetime) { e in
            try await e.addConfig(maxConnections: 1)
            // The pool's one connection is stuck in a send: the rest wait for room, untried.
            e.transport.set("acme/main", .hold)
            let ids = try await e.enqueue(6)
            let transport = e.transport
            try await e.running {
                let expired = try await e.until(15) { e in try await e.rows(ids).filter { $0.status == .expired }.count >= 3 }
                transport.release()
                let statuses = try await e.rows(ids).map(\.status)
                #expect(expired, "\(statuses)")
                let ended = try await e.until(15) { e in try await e.rows(ids).allSatisfy { $0.status == .sent || $0.status == .expired } }
                #expect(ended)
            }
            let waited = try await e.rows(ids).filter { $0.status == .expired }
            for row in waited {
                #expect(row.lastError?.contains("max_queue_lifetime_s") == true, "\(row.lastError ?? "-")")
                #expect(try await e.attempts(row.id!).isEmpty, "never tried: the pool had no room")
            }
            let deadline = Date().timeIntervalSince1970 + 1000
            #expect(try await e.store.retry(ids: [waited[0].id!], onlyFailed: false, deadline: deadline) == 1)
            let retried = try #require(try await e.rows([waited[0].id!]).first)
            #expect(retried.status == .queued)
            #expect(retried.expiresAt == deadline, "a fresh deadline, or it would expire again at once")
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func gracefulShutdownFinishesTheSendInHandAndGivesBackTheRest(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig(maxConnections: 1)
            e.transport.set("acme/main", .hold)
            let ids = try await e.enqueue(5)
            let transport = e.transport
            try await e.running {
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
            let statuses = try await e.rows(ids).map(\.status)
            #expect(statuses.filter { $0 == .sent }.count == transport.sends(to: "acme/main").count)
            #expect(statuses.allSatisfy { $0 == .sent || $0 == .queued }, "nothing left sending: \(statuses)")
            #expect(statuses.contains(.sent))
        }
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
