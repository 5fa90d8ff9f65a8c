/// What the dispatcher can take in one claim, decided before the claim transaction and
/// applied inside it as a value: the store calls no caller code while it holds the lock.
public struct ClaimPlan: Sendable {
    public var now: Double
    public var leaseSeconds: Double
    /// Also end rows whose deadline has passed (once a second is enough).
    public var expire: Bool
    /// At most this many messages in all.
    public var limit: Int
    /// Free places in the pools that exist, by configuration id (nil: the platform relay).
    public var room: [Int64?: Int]
    /// A pool that does not exist yet takes this many messages per connection of its limit.
    public var perConnection = ClaimPlan.messagesPerConnection

    /// What a pool whose pace is not known yet is given per connection: one in hand and one
    /// waiting, so a fast server's connection does not idle while the next claim is made.
    public static let messagesPerConnection = 2
    /// Messages per connection a pool is given: `pacing.workInHandSeconds` of its recent pace
    /// rounded up, at most `pacing.maxInHandPerConnection` (SQLite: 50 ms, 16; a server, whose
    /// claims take round trips, more: `QueuePacing`). A pool whose sends take longer than that
    /// gets one per connection: its connection then waits for the claim and composition of
    /// the next message (`PoolRegistry.wantsWork` asks for it as soon as a place is free),
    /// a millisecond or two against a send of 50 ms or more, while every message held beyond
    /// it costs tens of KB (its task, its composed copy), which with 1,000 tenants was most of
    /// the daemon's memory. It also means a password reset claimed after a report waits behind
    /// one report. A rate-limited pool's pace is its limit, however fast its server answers.
    public static func depth(secondsPerMessage: Double?, limits: PoolLimits, pacing: QueuePacing = .local) -> Int {
        var pace = secondsPerMessage ?? 0
        if let rate = limits.ratePerMinute, rate > 0 {
            pace = max(pace, 60 / Double(rate) * Double(limits.maxConnections))
        }
        guard pace > 0 else { return messagesPerConnection }
        let fits = min(Double(pacing.maxInHandPerConnection), (pacing.workInHandSeconds / pace).rounded(.up))
        return max(1, Int(fits))
    }
    public var defaultMaxConnections: Int
    /// Configurations this daemon has tripped that the committed routing may not show yet
    /// (id → settings version): treated as down.
    public var down: [Int64: Int] = [:]
    /// On a shared queue, the configurations whose connections another daemon drives (filled
    /// in by the store inside the claim): their rows are left to it, which is what keeps a
    /// configuration's `max_connections` and `rate_per_minute` for the whole cluster.
    public var foreign: Set<Int64> = []
    /// On a shared queue, the configurations whose pools this daemon has closed for idleness:
    /// the claim gives them up (or, with rows for them, keeps them) in its own transaction.
    public var giveUp: [Int64] = []
    /// The category defaults (priority, TTL) that admission applies.
    public var categories: [String: MailrouteConfiguration.Category]
    /// The bound on every message's wait that admission applies (SPEC §4).
    public var lifetime = MessageLifetime(MailrouteConfiguration.Delivery())

    public init(
        now: Double, leaseSeconds: Double, expire: Bool, limit: Int, room: [Int64?: Int], defaultMaxConnections: Int,
        categories: [String: MailrouteConfiguration.Category]
    ) {
        self.now = now
        self.leaseSeconds = leaseSeconds
        self.expire = expire
        self.limit = limit
        self.room = room
        self.defaultMaxConnections = defaultMaxConnections
        self.categories = categories
    }

    func category(_ name: String?) -> MailrouteConfiguration.Category {
        name.flatMap { categories[$0] } ?? .other
    }

    /// Admission, once per row when it becomes due: its effective priority (the smaller of its
    /// own, or its category's, and its configuration's, SPEC §4), due time and deadline.
    func admit(_ row: AdmissionRow, in table: RoutingTable) -> Admission {
        // The route alone: `route resolve`'s explanation strings are not stored.
        let resolution = Router.resolve(row.keys, in: table, explain: false)
        let category = category(row.keys.category)
        let own = row.priority ?? category.priority
        let due = row.sendAt ?? row.createdAt
        return Admission(
            id: row.id, effectivePriority: min(own, resolution.config?.priority ?? own), configId: resolution.config?.id,
            route: resolution.step, dueAt: due,
            expiresAt: lifetime.deadline(ownDeadline: row.expiresAt ?? category.ttlSeconds.map { row.createdAt + $0 }, dueAt: due))
    }

    /// Which due rows to take, in their order, given where each would go now: a pool with no
    /// room is skipped (its rows wait, nobody else's do). A configuration that is down sends
    /// to the relay, or with `fallback = none` is taken only to be put back to wait.
    func choose(_ candidates: [(id: Int64, resolution: RouteResolution)]) -> [Int] {
        var chooser = Chooser(plan: self)
        var chosen: [Int] = []
        for (index, candidate) in candidates.enumerated() where !chooser.isDone {
            if chooser.take(candidate.resolution) { chosen.append(index) }
        }
        return chosen
    }

    /// `choose`, one candidate at a time, so the claim can stop reading rows early.
    struct Chooser {
        let plan: ClaimPlan
        private var room: [Int64?: Int]
        private(set) var taken = 0
        private var skippedSinceTake = 0

        init(plan: ClaimPlan) {
            self.plan = plan
            self.room = plan.room
        }

        /// Enough: the limit is reached, or a long run of rows found no room (the pools they
        /// need are full; reading on would cost more than it could yield this time).
        var isDone: Bool { taken >= plan.limit || skippedSinceTake >= 64 }

        mutating func take(_ resolution: RouteResolution) -> Bool {
            guard let target = plan.connectionTarget(resolution) else { return took() }
            if let id = target, plan.foreign.contains(id) {
                skippedSinceTake += 1
                return false
            }
            let free = room[target] ?? plan.fresh(resolution.config, target: target)
            guard free > 0 else {
                room[target] = 0
                skippedSinceTake += 1
                return false
            }
            room[target] = free - 1
            return took()
        }

        private mutating func took() -> Bool {
            taken += 1
            skippedSinceTake = 0
            return true
        }
    }

    /// Whose connection a message resolved so would use: its configuration's (`.some(id)`),
    /// the relay's (`.some(nil)`: platform mail, or a configuration that is down), or none
    /// (nil: down with `fallback = none`, taken only to be put back to wait).
    public func connectionTarget(_ resolution: RouteResolution) -> Int64?? {
        guard let config = resolution.config else { return .some(nil) }
        if DeliveryPolicy.isDown(config) || isTripped(config) {
            return config.fallback == .none ? nil : .some(nil)
        }
        return .some(config.id)
    }

    /// On a shared queue: how many of `wanting` configurations nobody drives a daemon may take,
    /// holding `mine` of the `owned` that are driven, with `daemons` alive: up to its share of
    /// all of them, rounded up. Alone, it takes every one; with three daemons and three busy
    /// tenants, one each.
    public static func newConfigurations(mine: Int, owned: Int, wanting: Int, daemons: Int) -> Int {
        let all = owned + wanting
        let share = (all + max(1, daemons) - 1) / max(1, daemons)
        return min(wanting, max(0, share - mine))
    }

    func isTripped(_ config: SMTPConfigRecord) -> Bool {
        config.id.map { down[$0] == config.settingsVersion } ?? false
    }

    fileprivate func fresh(_ config: SMTPConfigRecord?, target: Int64?) -> Int {
        guard target != nil, let config else { return defaultMaxConnections * perConnection }
        return (config.maxConnections ?? defaultMaxConnections) * perConnection
    }
}
