/// Whether each configuration may be used, in one place (SPEC §4, "What trips a
/// configuration"). Up or down is the database's status, which every daemon and
/// `mailroutectl verify` share; this type adds only what a status cannot hold: the count of
/// consecutive connect timeouts that the breaker weighs, the probes in flight, and the
/// configurations this daemon tripped whose new status its routing has not read back yet
/// (a claim or a delivery holding the older snapshot must not try them again). A pure
/// state machine: times come in as arguments.
public struct ConfigHealth: Sendable {
    public var breakerTimeouts: Int
    public var cooldownSeconds: Double
    /// The longest wait between two probes of a configuration that stays down.
    public static let maxProbeInterval = 3600.0

    private var timeouts: [Identity: Int] = [:]
    private var probing: Set<Int64> = []
    /// When each was tripped: the memory lasts until the routing shows the status, and at
    /// most `tripMemorySeconds` (a status write that failed must not bar it for ever).
    private var tripped: [Identity: Double] = [:]
    static let tripMemorySeconds = 10.0

    /// Counts belong to one version of a configuration's connection settings.
    struct Identity: Hashable {
        var id: Int64
        var settingsVersion: Int
    }

    public init(breakerTimeouts: Int, cooldownSeconds: Double) {
        self.breakerTimeouts = max(1, breakerTimeouts)
        self.cooldownSeconds = cooldownSeconds
    }

    public static func isDown(_ config: SMTPConfigRecord) -> Bool { DeliveryPolicy.isDown(config) }

    /// Down by its status, or tripped here since that status was read.
    public func isDown(_ config: SMTPConfigRecord) -> Bool {
        Self.isDown(config) || identity(config).map { tripped[$0] != nil } ?? false
    }

    /// This daemon is recording the configuration as down.
    public mutating func trip(_ config: SMTPConfigRecord, now: Double) {
        if let key = identity(config) { tripped[key] = now }
    }

    /// The configurations tripped here and not yet seen down, by id and settings version, for
    /// `ClaimPlan.down`.
    public var trippedVersions: [Int64: Int] {
        Dictionary(tripped.keys.map { ($0.id, $0.settingsVersion) }, uniquingKeysWith: max)
    }

    /// The routing as read: a trip it shows (or that new settings or a deletion made moot)
    /// needs no memory of its own any more.
    public mutating func read(_ configs: [Int64: SMTPConfigRecord], now: Double) {
        tripped = tripped.filter { key, at in
            guard let config = configs[key.id], config.settingsVersion == key.settingsVersion else { return false }
            return !Self.isDown(config) && now - at < Self.tripMemorySeconds
        }
    }

    /// A connect or greeting timeout: whether it is the last straw that trips the configuration.
    public mutating func timedOut(_ config: SMTPConfigRecord) -> Bool {
        guard let key = identity(config) else { return false }
        let count = timeouts[key, default: 0] + 1
        timeouts[key] = count
        return count >= breakerTimeouts
    }

    /// A try that reached the server's greeting and beyond: earlier timeouts are forgiven.
    public mutating func reached(_ config: SMTPConfigRecord) {
        guard let key = identity(config) else { return }
        timeouts[key] = nil
    }

    public func consecutiveTimeouts(_ config: SMTPConfigRecord) -> Int {
        identity(config).map { timeouts[$0, default: 0] } ?? 0
    }

    /// When a configuration that went down now is first probed.
    public func firstProbe(now: Double) -> Double { now + cooldownSeconds }

    /// After the `failures`-th failed probe in a row: the wait doubles from `cooldown_s` up to
    /// an hour, so a wrong password is not tried every few minutes for ever (a provider would
    /// lock the account).
    public func nextProbe(afterFailures failures: Int, now: Double) -> Double {
        let factor = Double(1 << min(max(0, failures), 20))
        return now + min(Self.maxProbeInterval, cooldownSeconds * factor)
    }

    /// When a configuration that is down is next probed: its stored schedule, or (for a status
    /// recorded before schedules were kept) `cooldown_s` after it went down.
    public func nextProbe(of config: SMTPConfigRecord, now: Double) -> Double {
        config.nextProbeAt ?? ((config.statusChangedAt ?? now) + cooldownSeconds)
    }

    /// The configurations to probe now, one probe each at a time; marks them as probing.
    public mutating func probesDue(_ configs: some Sequence<SMTPConfigRecord>, now: Double) -> [SMTPConfigRecord] {
        var due: [SMTPConfigRecord] = []
        for config in configs where config.enabled && Self.isDown(config) {
            guard let id = config.id, !probing.contains(id), now >= nextProbe(of: config, now: now) else { continue }
            probing.insert(id)
            due.append(config)
        }
        return due
    }

    public mutating func probeFinished(_ config: SMTPConfigRecord, succeeded: Bool) {
        if let id = config.id { probing.remove(id) }
        if succeeded {
            reached(config)
            if let key = identity(config) { tripped[key] = nil }
        }
    }

    private func identity(_ config: SMTPConfigRecord) -> Identity? {
        config.id.map { Identity(id: $0, settingsVersion: config.settingsVersion) }
    }
}
