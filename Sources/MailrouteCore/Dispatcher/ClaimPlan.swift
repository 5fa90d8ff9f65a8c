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
    /// A pool that does not exist yet takes this many messages per connection of its limit:
    /// one in hand and one waiting keeps a connection busy.
    public var perConnection = 2
    public var defaultMaxConnections: Int
    /// The category defaults (priority, TTL) that admission applies.
    public var categories: [String: MailrouteConfiguration.Category]

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
        let resolution = Router.resolve(row.keys, in: table)
        let category = category(row.keys.category)
        let own = row.priority ?? category.priority
        return Admission(
            id: row.id, effectivePriority: min(own, resolution.config?.priority ?? own), configId: resolution.config?.id,
            route: resolution.step, dueAt: row.sendAt ?? row.createdAt,
            expiresAt: row.expiresAt ?? category.ttlSeconds.map { row.createdAt + $0 })
    }

    /// Which due rows to take, in their order, given where each would go now: a pool with no
    /// room is skipped (its rows wait, nobody else's do). A configuration that is down sends
    /// to the relay, or with `fallback = none` is taken only to be put back to wait.
    func choose(_ candidates: [(id: Int64, resolution: RouteResolution)]) -> [Int] {
        var room = self.room
        var chosen: [Int] = []
        for (index, candidate) in candidates.enumerated() where chosen.count < limit {
            var target = candidate.resolution.config?.id
            if let config = candidate.resolution.config, DeliveryPolicy.isDown(config) {
                if config.fallback == .none {
                    chosen.append(index)
                    continue
                }
                target = nil
            }
            let free = room[target] ?? fresh(candidate.resolution.config, target: target)
            guard free > 0 else { continue }
            room[target] = free - 1
            chosen.append(index)
        }
        return chosen
    }

    private func fresh(_ config: SMTPConfigRecord?, target: Int64?) -> Int {
        guard target != nil, let config else { return defaultMaxConnections * perConnection }
        return (config.maxConnections ?? defaultMaxConnections) * perConnection
    }
}
