import Foundation

/// The dispatcher's pools, one per configuration and version of its connection settings,
/// plus the platform relay's.
struct PoolRegistry {
    enum Key: Hashable {
        case config(id: Int64, version: Int)
        case platform
    }

    let transport: any SMTPTransport
    let pacing: QueuePacing
    private var pools: [Key: any SMTPPool] = [:]

    init(transport: any SMTPTransport, pacing: QueuePacing = .local) {
        self.transport = transport
        self.pacing = pacing
    }

    /// Pools that had no free place when the last claim was planned: their rows may wait.
    private var fullAtLastClaim: Set<Key> = []

    /// How many messages a pool is given in all: `ClaimPlan.depth` per connection.
    func capacity(_ pool: any SMTPPool, depth: Int? = nil) -> Int {
        pool.limits.maxConnections * (depth ?? self.depth(pool))
    }

    private func depth(_ pool: any SMTPPool) -> Int {
        ClaimPlan.depth(secondsPerMessage: pool.secondsPerMessage, limits: pool.limits, pacing: pacing)
    }

    /// Free places per pool that exists (configuration id; nil is the relay), for the
    /// `ClaimPlan` of a claim about to be made.
    mutating func roomForClaim() -> [Int64?: Int] {
        var room: [Int64?: Int] = [:]
        fullAtLastClaim.removeAll(keepingCapacity: true)
        for (key, pool) in pools {
            let free = capacity(pool) - pool.load
            if free <= 0 { fullAtLastClaim.insert(key) }
            switch key {
            case .platform: room[nil] = free
            case .config(let id, _): room[id] = free
            }
        }
        return room
    }

    /// While draining, whether a claim is worth a transaction: a busy pool has a quarter of
    /// its places free again, or, with one message per connection, any place (each free place
    /// is an idle connection then); or a pool that was full at the last claim has room (its
    /// last message may have finished). A pool that had room at the last claim and got
    /// nothing has no rows waiting.
    func wantsWork() -> Bool {
        var anyBusy = false
        for (key, pool) in pools {
            let load = pool.load
            guard load > 0 || fullAtLastClaim.contains(key) else { continue }
            anyBusy = true
            let depth = self.depth(pool)
            let capacity = self.capacity(pool, depth: depth)
            if capacity - load >= (depth == 1 ? 1 : max(1, capacity / 4)) { return true }
        }
        return !anyBusy
    }

    /// nil when the configuration's password cannot be opened (no key, or another key).
    mutating func pool(for config: SMTPConfigRecord, settings: MailrouteConfiguration, secrets: SecretBox?) -> (any SMTPPool)? {
        guard let id = config.id else { return nil }
        let key = Key.config(id: id, version: config.settingsVersion)
        if let pool = pools[key] { return pool }
        let password: String?
        do {
            password = try config.passwordSealed.map { sealed in
                guard let secrets else { throw SecretError.noKey(searched: [], sealedPasswords: 1) }
                return try secrets.open(sealed)
            }
        } catch {
            return nil
        }
        let delivery = settings.delivery
        let pool = transport.makePool(
            name: config.label, endpoint: SMTPEndpoint(config: config, password: password, delivery: delivery),
            limits: PoolLimits(
                maxConnections: config.maxConnections ?? delivery.defaultMaxConnections,
                maxMessagesPerConnection: delivery.maxMessagesPerConnection, idleTimeout: delivery.idleTimeoutSeconds,
                ratePerMinute: config.ratePerMinute, maxQueueWait: Self.maxQueueWait(settings)))
        pools[key] = pool
        return pool
    }

    mutating func platformPool(settings: MailrouteConfiguration, password: String?) -> any SMTPPool {
        if let pool = pools[.platform] { return pool }
        let p = settings.platform
        let delivery = settings.delivery
        let endpoint = SMTPEndpoint(
            host: p.host, port: p.port, security: p.security, username: nonEmpty(p.username), password: password,
            caFile: nonEmpty(p.caFile), heloName: delivery.effectiveHeloName, connectTimeoutSeconds: delivery.connectTimeoutSeconds,
            commandTimeoutSeconds: delivery.commandTimeoutSeconds, maxIdleSeconds: delivery.idleTimeoutSeconds)
        let pool = transport.makePool(
            name: "platform", endpoint: endpoint,
            limits: PoolLimits(
                maxConnections: delivery.defaultMaxConnections, maxMessagesPerConnection: delivery.maxMessagesPerConnection,
                idleTimeout: delivery.idleTimeoutSeconds, maxQueueWait: Self.maxQueueWait(settings)))
        pools[.platform] = pool
        return pool
    }

    /// Half the lease: what waits longer in a pool is given back and claimed again in time.
    static func maxQueueWait(_ settings: MailrouteConfiguration) -> Double { settings.queue.leaseSeconds / 2 }

    /// Takes out a configuration's pools (every version): it was just tripped, and the work
    /// queued in them must not try the server that refused (a wrong password would be tried
    /// once per queued message). Their queued work comes back not started and is claimed
    /// again, now for the relay or to wait; sends in hand finish.
    mutating func retire(configID: Int64) -> [any SMTPPool] {
        retire { id, _ in id == configID }
    }

    /// Takes out the pools whose configuration's connection settings changed, or that was
    /// deleted; the caller closes them (their sends in hand finish first).
    mutating func retireStale(_ routing: RoutingTable) -> [any SMTPPool] {
        retire { id, version in routing.configs[id]?.settingsVersion != version }
    }

    /// Takes out the configurations' pools (id, settings version) that `matches`.
    private mutating func retire(where matches: (Int64, Int) -> Bool) -> [any SMTPPool] {
        var retired: [any SMTPPool] = []
        for key in pools.keys {
            guard case .config(let id, let version) = key, matches(id, version), let pool = pools.removeValue(forKey: key) else { continue }
            lastBusy[key] = nil
            retired.append(pool)
        }
        return retired
    }

    /// When each configuration pool was last seen with work (`retireIdle`).
    private var lastBusy: [Key: Double] = [:]

    /// Takes out the configuration pools that have had no work for `after` seconds, with
    /// their ids: on a shared queue the caller closes them and gives the configuration up, so
    /// another daemon may drive its connections.
    mutating func retireIdle(now: Double, after: Double, busy: Set<Int64> = []) -> [(Int64, any SMTPPool)] {
        var idle: [(Int64, any SMTPPool)] = []
        for (key, pool) in pools {
            guard case .config(let id, _) = key else { continue }
            if pool.load > 0 || busy.contains(id) || lastBusy[key] == nil {
                lastBusy[key] = now
            } else if now - lastBusy[key]! >= after {
                pools[key] = nil
                lastBusy[key] = nil
                idle.append((id, pool))
            }
        }
        return idle
    }

    /// The configurations that have a pool here.
    var configIDs: Set<Int64> {
        Set(pools.keys.compactMap { if case .config(let id, _) = $0 { id } else { nil } })
    }

    /// Work waiting or in hand in a configuration's pools (every version).
    func load(configID: Int64) -> Int {
        pools.reduce(0) { sum, entry in
            if case .config(configID, _) = entry.key { return sum + entry.value.load }
            return sum
        }
    }

    /// Takes out these configurations' pools, with their ids, to be closed (handed over).
    mutating func retire(configIDs: Set<Int64>) -> [(Int64, any SMTPPool)] {
        guard !configIDs.isEmpty else { return [] }
        var out: [(Int64, any SMTPPool)] = []
        for key in pools.keys {
            guard case .config(let id, _) = key, configIDs.contains(id), let pool = pools.removeValue(forKey: key) else { continue }
            lastBusy[key] = nil
            out.append((id, pool))
        }
        return out
    }

    /// Connections per pool in service, by its name (`tenant/name`, or `platform`), summed
    /// over the versions of a configuration's settings. Retired pools are not here: their
    /// series leave the metrics while their last sends finish.
    func connections() -> [String: PoolConnections] {
        var byName: [String: PoolConnections] = [:]
        for pool in pools.values {
            let c = pool.connections
            byName[pool.name, default: PoolConnections()].open += c.open
            byName[pool.name, default: PoolConnections()].busy += c.busy
        }
        return byName
    }

    func hasPool(configID: Int64) -> Bool {
        pools.keys.contains { if case .config(configID, _) = $0 { true } else { false } }
    }

    /// Takes out every pool (a reload, or shutdown); they are rebuilt on next use.
    mutating func retireAll() -> [any SMTPPool] {
        defer {
            pools.removeAll()
            lastBusy.removeAll()
        }
        return Array(pools.values)
    }
}
