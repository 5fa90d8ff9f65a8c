import Foundation
import GRDB
import Prometheus
import Testing

@testable import MailrouteCore

/// The Prometheus series (SPEC §9) as the engine records them and a scrape reads them: the
/// real dispatcher on a real queue with the fake transport, as `EngineTests`, each case with
/// a registry of its own. The HTTP side (`GET /metrics`) is the API's to test.
@Suite struct MetricsTests {
    typealias Engine = EngineTests.Engine

    /// Each series line's value, by the series as written (`name{label="value",…}`).
    struct Scrape {
        let text: String
        let values: [String: Double]

        init(_ text: String) {
            self.text = text
            var values: [String: Double] = [:]
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
                values[String(line[..<space])] = value
            }
            self.values = values
        }

        subscript(_ series: String) -> Double? { values[series] }

        static func of(_ metrics: MailrouteMetrics) async -> Scrape { Scrape(await metrics.expositionText()) }
    }

    func withEngine(
        _ backend: Backend, configure: (inout MailrouteConfiguration) -> Void = { _ in }, _ body: @Sendable (Engine) async throws -> Void
    ) async throws {
        try await EngineTests().withEngine(backend, configure: configure, body)
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func sentMailCountsByOutcomeAndConfigurationWithItsLatencyAndNoRecipient(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig()
            let metrics = MailrouteMetrics(store: e.store)
            let before = await Scrape.of(metrics)
            #expect(before[#"mailroute_messages_total{outcome="sent",config="acme/main"}"#] == nil)
            let ids = try await e.enqueue(5)
            let platform = try await e.enqueue(2, tenant: nil)
            try await e.running(metrics: metrics) {
                let done1 = try await e.until(10, Engine.allSent(ids + platform))
                #expect(done1)
            }
            let after = await Scrape.of(metrics)
            #expect(after[#"mailroute_messages_total{outcome="sent",config="acme/main"}"#] == 5, "\(after.text)")
            #expect(after[#"mailroute_messages_total{outcome="sent",config="platform"}"#] == 2)
            #expect(after[#"mailroute_attempts_total{outcome="sent",error_kind="none"}"#] == 7)
            #expect(after["mailroute_delivery_latency_seconds_count"] == 7)
            #expect(after[#"mailroute_delivery_latency_seconds_bucket{le="+Inf"}"#] == 7)
            #expect(after[#"mailroute_queue_messages{status="sent"}"#] == 7)
            #expect(after[#"mailroute_queue_messages{status="queued"}"#] == 0)
            #expect(after[#"mailroute_configurations{status="verified"}"#] == 1)
            #expect(after["mailroute_database_up"] == 1)
            // Bounded labels: configurations and enums, never an address or a subject.
            #expect(!after.text.contains("r@example.com"))
            #expect(!after.text.contains("example.com"))
            #expect(!after.text.contains("main@acme.test"))
            #expect(after.text.contains("# TYPE mailroute_delivery_latency_seconds histogram"))
            #expect(after.text.contains("# TYPE mailroute_messages_total counter"))
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func aFailingDeliveryCountsWithItsErrorKind(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig()
            try await e.addConfig("brand", "main")
            // The recipient refused for good: failed, no fallback.
            e.transport.set("acme/main", .fail(DeliveryError(kind: .messageRejected, smtpCode: 550, text: "550 5.7.1 r@example.com no", isTemporary: false)))
            // The login refused: the configuration trips and the mail leaves through the relay.
            e.transport.set("brand/main", .fail(DeliveryError(kind: .authFailed, smtpCode: 535, text: "535 5.7.8 no", isTemporary: false)))
            let metrics = MailrouteMetrics(store: e.store)
            let failed = try await e.enqueue(2)
            let fellBack = try await e.enqueue(1, tenant: "brand")
            try await e.running(metrics: metrics) {
                #expect(try await e.until(10) { e in try await e.rows(failed).allSatisfy { $0.status == .failed } })
                let done2 = try await e.until(10, Engine.allSent(fellBack))
                #expect(done2)
            }
            let s = await Scrape.of(metrics)
            #expect(s[#"mailroute_messages_total{outcome="failed",config="acme/main"}"#] == 2, "\(s.text)")
            #expect(s[#"mailroute_attempts_total{outcome="failed",error_kind="message_rejected"}"#] == 2)
            // Counted as the configuration's mail, though the relay sent it.
            #expect(s[#"mailroute_messages_total{outcome="sent",config="brand/main"}"#] == 1)
            #expect(s[#"mailroute_attempts_total{outcome="fallback",error_kind="auth_failed"}"#] == 1)
            #expect(s[#"mailroute_attempts_total{outcome="sent",error_kind="none"}"#] == 1)
            #expect(s[#"mailroute_configurations{status="error"}"#] == 1)
            #expect(s["mailroute_delivery_latency_seconds_count"] == 1)
            // The server's text is in the attempt rows, not in a label.
            #expect(!s.text.contains("5.7.1"))
            #expect(!s.text.contains("example.com"))
        }
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func queueGaugesAreReadAtEachScrape(_ backend: Backend) async throws {
        try await withEngine(backend) { e in
            try await e.addConfig()
            let metrics = MailrouteMetrics(store: e.store)
            let empty = await Scrape.of(metrics)
            #expect(empty[#"mailroute_queue_messages{status="queued"}"#] == 0, "\(empty.text)")
            #expect(empty["mailroute_oldest_due_message_age_seconds"] == 0)
            #expect(empty[#"mailroute_configurations{status="not_verified"}"#] == 1)
            #expect(empty["mailroute_database_up"] == 1)

            let now = Date().timeIntervalSince1970
            var old = MessageRecord(category: "report", rcptTo: #"["r@example.com"]"#, subject: "old")
            old.tenant = "acme"
            old.textBody = "x"
            old.createdAt = now - 100
            let oldID = try await e.store.enqueue(old, attachments: [])
            var later = old
            later.sendAt = now + 3600
            _ = try await e.store.enqueue(later, attachments: [])
            let due = try await e.enqueue(2) + [oldID]
            let queued = await Scrape.of(metrics)
            #expect(queued[#"mailroute_queue_messages{status="queued"}"#] == 4, "\(queued.text)")
            // The one due for 100 s; the one scheduled an hour ahead is not due.
            let age = try #require(queued["mailroute_oldest_due_message_age_seconds"])
            #expect(age >= 100 && age < 200, "\(age)")

            try await e.running(metrics: metrics) {
                let done3 = try await e.until(10, Engine.allSent(due))
                #expect(done3)
            }
            let drained = await Scrape.of(metrics)
            #expect(drained[#"mailroute_queue_messages{status="queued"}"#] == 1, "only the scheduled one")
            #expect(drained[#"mailroute_queue_messages{status="sent"}"#] == 3)
            #expect(drained["mailroute_oldest_due_message_age_seconds"] == 0)
            #expect(drained[#"mailroute_configurations{status="verified"}"#] == 1)
            #expect(drained[#"mailroute_configurations{status="not_verified"}"#] == 0)
        }
    }

    /// Rows that expire waiting for room are expired by the claim, not by a delivery: they count too.
    @Test(arguments: [Backend.sqlite, .postgres])
    func mailExpiredWaitingCountsAndBusyConnectionsShow(_ backend: Backend) async throws {
        try await withEngine(backend, configure: EngineTests.lifetime) { e in
            try await e.addConfig(maxConnections: 1)
            e.transport.set("acme/main", .hold)
            let metrics = MailrouteMetrics(store: e.store)
            let ids = try await e.enqueue(6)
            let transport = e.transport
            try await e.running(metrics: metrics) {
                // Bounded, and generous: under a full suite on two cores the claim can take seconds.
                let deadline = Date().addingTimeInterval(30)
                var held = await Scrape.of(metrics)
                while (transport.holding < 1 || held[#"mailroute_connections_busy{config="acme/main"}"#] != 1) && Date() < deadline {
                    try await Task.sleep(for: .milliseconds(20))
                    held = await Scrape.of(metrics)
                }
                #expect(held[#"mailroute_connections_busy{config="acme/main"}"#] == 1, "\(held.text)")
                #expect(held[#"mailroute_connections_open{config="acme/main"}"#] == 1)
                #expect(try await e.until(15) { e in try await e.rows(ids).filter { $0.status == .expired }.count >= 3 })
                transport.release()
                #expect(try await e.until(15) { e in try await e.rows(ids).allSatisfy { $0.status == .sent || $0.status == .expired } })
            }
            let rows = try await e.rows(ids)
            let s = await Scrape.of(metrics)
            let expired = Double(rows.filter { $0.status == .expired }.count)
            // A row that expired before the claim ever admitted it has no configuration yet and
            // counts as `platform` (under a loaded machine some do): every expiry counts once.
            let counted = s.values.filter { $0.key.hasPrefix(#"mailroute_messages_total{outcome="expired","#) }.values.reduce(0, +)
            #expect(counted == expired, "\(s.text)")
            #expect((s[#"mailroute_messages_total{outcome="expired",config="acme/main"}"#] ?? 0) >= 1, "\(s.text)")
            let sent = Double(rows.filter { $0.status == .sent }.count)
            #expect(s[#"mailroute_messages_total{outcome="sent",config="acme/main"}"#] ?? 0 == sent)
        }
    }

    @Test func aPoolGoneDropsItsConnectionSeries() async throws {
        let store = try QueueStore(path: Paths.temporaryDirectory("metrics").appendingPathComponent("q.db").path)
        let metrics = MailrouteMetrics(store: store)
        let pools = Locked<[String: PoolConnections]>(["acme/main": PoolConnections(open: 3, busy: 2), "platform": PoolConnections(open: 1, busy: 0)])
        metrics.observePools { pools.withLock { $0 } }
        let both = await Scrape.of(metrics)
        #expect(both[#"mailroute_connections_open{config="acme/main"}"#] == 3, "\(both.text)")
        #expect(both[#"mailroute_connections_busy{config="acme/main"}"#] == 2)
        #expect(both[#"mailroute_connections_open{config="platform"}"#] == 1)
        pools.withLock { $0["acme/main"] = nil }
        let one = await Scrape.of(metrics)
        #expect(one[#"mailroute_connections_open{config="acme/main"}"#] == nil, "\(one.text)")
        #expect(one[#"mailroute_connections_busy{config="acme/main"}"#] == nil)
        #expect(one[#"mailroute_connections_open{config="platform"}"#] == 1)
    }

    @Test func aDatabaseThatFailsLeavesItsSeriesOutAndTheScrapeAnswers() async throws {
        let store = try QueueStore(path: Paths.temporaryDirectory("metrics").appendingPathComponent("q.db").path)
        let metrics = MailrouteMetrics(store: store)
        metrics.record(
            DeliveryOutcome(status: .sent, attempts: [], sentAt: 10), config: "acme/main", createdAt: 9)
        #expect(await Scrape.of(metrics)["mailroute_database_up"] == 1)
        try await store.pool.write { db in try db.execute(sql: "ALTER TABLE messages RENAME TO messages_elsewhere") }
        let down = await Scrape.of(metrics)
        #expect(down["mailroute_database_up"] == 0, "\(down.text)")
        #expect(down[#"mailroute_queue_messages{status="queued"}"#] == nil, "unknown, not 0")
        #expect(down["mailroute_oldest_due_message_age_seconds"] == nil)
        #expect(down[#"mailroute_messages_total{outcome="sent",config="acme/main"}"#] == 1, "what the engine counted still shows")
        try await store.pool.write { db in try db.execute(sql: "ALTER TABLE messages_elsewhere RENAME TO messages") }
        let up = await Scrape.of(metrics)
        #expect(up["mailroute_database_up"] == 1)
        #expect(up[#"mailroute_queue_messages{status="queued"}"#] == 0)
    }
}
