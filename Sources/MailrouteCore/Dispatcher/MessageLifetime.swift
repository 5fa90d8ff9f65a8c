/// SPEC §4 "Nothing waits forever": every unsent message has one deadline, stored in
/// `expires_at` when it is admitted: the earlier of its own (`expires_at`, or its category's
/// TTL) and `max_queue_lifetime_s` after it was due. One column means every place that already
/// ends a row past its deadline (the claim's sweep of waiting rows, a row in hand, a retry
/// that would come too late) bounds the lifetime too, whatever the row waits for: backoff, a
/// configuration down with `fallback = none`, a pool that is full or rate-limited.
public struct MessageLifetime: Sendable, Equatable {
    public var seconds: Double

    public init(seconds: Double) {
        self.seconds = seconds
    }

    public init(_ delivery: MailrouteConfiguration.Delivery) {
        self.init(seconds: delivery.maxQueueLifetimeSeconds)
    }

    /// The deadline admission stores.
    public func deadline(ownDeadline: Double?, dueAt: Double) -> Double {
        min(ownDeadline ?? .infinity, dueAt + seconds)
    }

    /// Whether a stored deadline is the lifetime's rather than the message's own (the same
    /// comparison as the store's sweep: `expires_at >= due + lifetime`).
    public func isLifetimeDeadline(_ deadline: Double, dueAt: Double) -> Bool {
        deadline >= dueAt + seconds
    }

    /// Why a message expired: which deadline ran out, and what it last waited for.
    public func reason(deadline: Double, dueAt: Double, lastError: String? = nil) -> String {
        let why = isLifetimeDeadline(deadline, dueAt: dueAt) ? lifetimeReason : Self.ownReason
        guard let lastError, !lastError.isEmpty else { return why }
        return "\(why); last error: \(lastError)"
    }

    /// The words for a row the lifetime ended.
    public var lifetimeReason: String {
        "not sent within max_queue_lifetime_s (\(Self.format(seconds)) s) of its due time"
    }

    /// The words for a row its own `expires_at` or its category's TTL ended.
    public static let ownReason = "expired before it could be delivered (its expires_at or its category's ttl_s passed)"

    /// A fresh deadline for a row the operator puts back in line (`queue retry`): the lifetime
    /// from now, so a retried row is bounded too but does not expire again at once.
    public func retryDeadline(now: Double) -> Double {
        now + seconds
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }
}
