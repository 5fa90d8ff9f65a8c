import Foundation
import Prometheus

/// The daemon's Prometheus series (SPEC §9), in one registry of its own: the daemon gives
/// the same registry to swift-metrics for the libraries' series, and each test its own.
///
/// Counters and the latency histogram are recorded by the engine as outcomes are committed
/// (`Dispatcher.finish`, and the claim for rows that expire waiting); the gauges are read
/// when scraped (`exposition()`): the queue by status and the configurations from the store,
/// the connections from the dispatcher's pools.
///
/// Every label value comes from a closed set: an enum's raw value, or a configuration's label
/// (`tenant/name`, or `platform` for the relay's own mail), so a series per configuration and
/// outcome at most. Never a recipient, a sender or a server's text.
public final class MailrouteMetrics: Sendable {
    /// What `GET /metrics` answers with: the text format, version 0.0.4.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Enqueue (`created_at`) to `sent`: a relay answers in well under a second, a tenant's
    /// server after its backoff in minutes or hours; past a day `max_queue_lifetime_s` nears.
    public static let latencyBuckets: [Double] = [
        0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
    ]

    public let registry: PrometheusCollectorRegistry
    private let store: any QueueBackend
    private let now: @Sendable () -> Double
    private let latency: ValueHistogram
    /// Counters are made once per label set and kept: the registry's own lookup renders and
    /// validates the labels, which is too much per message at thousands a second.
    private let counters = Locked(Counters())
    private let pools = Locked<(@Sendable () async -> [String: PoolConnections])?>(nil)
    /// The pools' labels in the last scrape, so that a pool gone since drops its series.
    private let poolLabels = Locked<Set<String>>([])

    private struct Counters {
        var messages: [MessageKey: Counter] = [:]
        var attempts: [AttemptKey: Counter] = [:]
    }

    private struct MessageKey: Hashable {
        var config: String
        var outcome: MessageStatus
    }

    private struct AttemptKey: Hashable {
        var outcome: AttemptOutcome
        var errorKind: DeliveryError.Kind?
    }

    /// - Parameters:
    ///   - store: the queue the scrape-time gauges are read from.
    ///   - now: seconds since 1970, as the dispatcher's clock.
    public init(
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(), store: any QueueBackend,
        now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }
    ) {
        self.registry = registry
        self.store = store
        self.now = now
        latency = registry.makeValueHistogram(descriptor: Series.latency, buckets: Self.latencyBuckets)
    }

    // MARK: - Scraping

    /// The Prometheus text format, with the gauges read now. Never fails: with the database out
    /// of reach the series read from it are left out and `mailroute_database_up` is 0, so a
    /// scrape still answers (and the counters, which the engine keeps in memory, still show).
    public func exposition() async -> [UInt8] {
        await refresh()
        return registry.emitToBuffer()
    }

    /// `exposition()` as a string.
    public func expositionText() async -> String {
        String(decoding: await exposition(), as: UTF8.self)
    }

    /// Where the connections gauges come from: the dispatcher's pools in service, by label.
    func observePools(_ source: @escaping @Sendable () async -> [String: PoolConnections]) {
        pools.withLock { $0 = source }
    }

    private func refresh() async {
        let t = now()
        do {
            // Two reads: the counts the STATUS line also makes, and one of its own.
            let counts = try await store.counts(now: t)
            let gauges = try await store.gauges(now: t)
            registry.makeGauge(descriptor: Series.databaseUp).set(1.0)
            let byStatus: [(MessageStatus, Int)] = [
                (.queued, counts.queued), (.sending, counts.sending), (.deferred, counts.deferred), (.sent, counts.sent),
                (.failed, counts.failed), (.expired, counts.expired), (.cancelled, counts.cancelled),
            ]
            for (status, n) in byStatus {
                registry.makeGauge(descriptor: Series.queue, labels: [("status", status.rawValue)]).set(Double(n))
            }
            registry.makeGauge(descriptor: Series.oldestDue).set(gauges.oldestDueAt.map { max(0, t - $0) } ?? 0)
            for status in ConfigStatus.allCases {
                registry.makeGauge(descriptor: Series.configurations, labels: [("status", status.rawValue)])
                    .set(Double(gauges.configurations[status] ?? 0))
            }
        } catch {
            // Unknown is absent, not a stale or zero value an alert would read as true.
            registry.makeGauge(descriptor: Series.databaseUp).set(0.0)
            for status in MessageStatus.allCases {
                registry.unregisterGauge(registry.makeGauge(descriptor: Series.queue, labels: [("status", status.rawValue)]))
            }
            registry.unregisterGauge(registry.makeGauge(descriptor: Series.oldestDue))
            for status in ConfigStatus.allCases {
                registry.unregisterGauge(registry.makeGauge(descriptor: Series.configurations, labels: [("status", status.rawValue)]))
            }
        }
        guard let source = pools.withLock({ $0 }) else { return }
        let current = await source()
        let gone = poolLabels.withLock { labels in
            defer { labels = Set(current.keys) }
            return labels.subtracting(current.keys)
        }
        for label in gone {
            registry.unregisterGauge(registry.makeGauge(descriptor: Series.connectionsOpen, labels: [("config", label)]))
            registry.unregisterGauge(registry.makeGauge(descriptor: Series.connectionsBusy, labels: [("config", label)]))
        }
        for (label, connections) in current {
            registry.makeGauge(descriptor: Series.connectionsOpen, labels: [("config", label)]).set(Double(connections.open))
            registry.makeGauge(descriptor: Series.connectionsBusy, labels: [("config", label)]).set(Double(connections.busy))
        }
    }

    // MARK: - Recording

    /// A message's outcome as committed: its attempts, and, when it is final, the message and
    /// (sent) its time from enqueue. `config` is the configuration it was routed to, even when
    /// it left through the relay as that configuration's fallback; `platform` for the relay's
    /// own mail. A deferral counts its attempts only: the message is not finished.
    func record(_ outcome: DeliveryOutcome, config: String, createdAt: Double?) {
        let final = outcome.status == .sent || outcome.status == .failed || outcome.status == .expired
        let (attempts, message) = counters.withLock { counters -> ([Counter], Counter?) in
            var attempts: [Counter] = []
            attempts.reserveCapacity(outcome.attempts.count)
            for attempt in outcome.attempts {
                let key = AttemptKey(outcome: attempt.outcome, errorKind: Self.errorKind(attempt.errorKind))
                attempts.append(counters.attempts[key] ?? make(key, in: &counters))
            }
            guard final else { return (attempts, nil) }
            let key = MessageKey(config: config, outcome: outcome.status)
            return (attempts, counters.messages[key] ?? make(key, in: &counters))
        }
        for counter in attempts { counter.increment() }
        message?.increment()
        if outcome.status == .sent, let sentAt = outcome.sentAt, let createdAt {
            latency.record(max(0, sentAt - createdAt))
        }
    }

    /// Rows the claim expired while they waited, by the label of the configuration they were
    /// routed to.
    func recordExpired(config: String, count: Int) {
        let key = MessageKey(config: config, outcome: .expired)
        counters.withLock { counters in counters.messages[key] ?? make(key, in: &counters) }.increment(by: Int64(count))
    }

    /// A kind outside the enum (an attempt row's text is the store's) counts as `unknown`, so
    /// the label's values stay those of `DeliveryError.Kind` and `none`.
    private static func errorKind(_ raw: String?) -> DeliveryError.Kind? {
        guard let raw else { return nil }
        return DeliveryError.Kind(rawValue: raw) ?? .unknown
    }

    private func make(_ key: MessageKey, in counters: inout Counters) -> Counter {
        let counter = registry.makeCounter(
            descriptor: Series.messages, labels: [("outcome", key.outcome.rawValue), ("config", key.config)])
        counters.messages[key] = counter
        return counter
    }

    private func make(_ key: AttemptKey, in counters: inout Counters) -> Counter {
        let counter = registry.makeCounter(
            descriptor: Series.attempts, labels: [("outcome", key.outcome.rawValue), ("error_kind", key.errorKind?.rawValue ?? "none")])
        counters.attempts[key] = counter
        return counter
    }

    // MARK: - The series

    /// Each series' name and help, in one place: the registry refuses a second help text.
    /// Computed, not stored: the descriptor is not `Sendable`, and it is read only when a
    /// series is made and at a scrape.
    enum Series {
        static var messages: MetricNameDescriptor {
            descriptor("messages", "total", "Messages finished, by outcome (sent, failed, expired) and the configuration they were routed to.")
        }
        static var attempts: MetricNameDescriptor {
            descriptor("attempts", "total", "Delivery attempts, by outcome (sent, deferred, failed, fallback) and error kind (none when sent).")
        }
        static var latency: MetricNameDescriptor { descriptor("delivery_latency", "seconds", "Time from enqueue (created_at) to sent.") }
        static var queue: MetricNameDescriptor { descriptor("queue", "messages", "Messages in the queue database, by status.") }
        static var oldestDue: MetricNameDescriptor {
            descriptor(
                "oldest_due_message_age", "seconds", "How long the message waiting longest since it became due has waited; 0 when none is due.")
        }
        static var configurations: MetricNameDescriptor { descriptor("configurations", "", "SMTP configurations, by status.") }
        static var connectionsOpen: MetricNameDescriptor {
            descriptor("connections", "open", "SMTP connections open, per configuration pool (platform: the relay).")
        }
        static var connectionsBusy: MetricNameDescriptor {
            descriptor("connections", "busy", "SMTP connections with a message in hand, per configuration pool (platform: the relay).")
        }
        static var databaseUp: MetricNameDescriptor {
            descriptor("database", "up", "1 if the last scrape could read the queue database, else 0.")
        }

        private static func descriptor(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "mailroute", metricName: name, unitName: unit, helpText: help)
        }
    }
}
