/// The seam between the delivery engine and the wire, as maddy's `module.DeliveryTarget`
/// is between its queue and remote delivery: the dispatcher asks a transport for one pool
/// per configuration (per connection identity) and hands it work; how connections are kept
/// and driven is the transport's business. Tests inject an in-process fake.
public protocol SMTPTransport: Sendable {
    /// A new pool for `endpoint`. A pool's connections carry only this endpoint's identity
    /// (host, port, security, credentials, CA): never another pool's mail.
    func makePool(name: String, endpoint: SMTPEndpoint, limits: PoolLimits) -> any SMTPPool
}

/// At most `limits.maxConnections` connections to one endpoint, reused across messages.
public protocol SMTPPool: AnyObject, Sendable {
    var name: String { get }
    var endpoint: SMTPEndpoint { get }
    var limits: PoolLimits { get }
    /// Work waiting or in hand: the dispatcher claims no more than the pool can take.
    var load: Int { get }
    /// How long one connection has lately taken per message sent (nil: no measure yet); the
    /// dispatcher gives a fast pool more messages in hand (`ClaimPlan.depth`).
    var secondsPerMessage: Double? { get }
    /// Its connections as they stand, for the metrics (read at scrape time, from any thread).
    var connections: PoolConnections { get }
    /// Runs `work` on one of the pool's connections.
    func perform(_ work: PoolWork) async -> PoolCompletion
    /// Stops taking work: queued work completes `.notStarted`, work in hand finishes, then
    /// each connection QUITs. Returns when they have, or after `timeout` seconds.
    func close(timeout: Double) async
}

extension SMTPPool {
    public func close() async { await close(timeout: 30) }

    /// A pool that keeps no connections of its own to count.
    public var connections: PoolConnections { PoolConnections() }
}

/// A pool's connections: `open`, established (logged in, idle or in use); `busy`, those of
/// them with a message in hand. A connection still being made counts in neither.
public struct PoolConnections: Sendable, Equatable {
    public var open: Int
    public var busy: Int

    public init(open: Int = 0, busy: Int = 0) {
        self.open = open
        self.busy = busy
    }
}

public struct PoolLimits: Sendable, Equatable {
    public var maxConnections: Int
    public var maxMessagesPerConnection: Int
    public var idleTimeout: Double
    /// Messages per minute; nil = unlimited.
    public var ratePerMinute: Int?
    /// Work not started this many seconds after it was handed over comes back `.notStarted`:
    /// its lease would run out while it waits behind a server that slowed down, and another
    /// claim would send it a second time.
    public var maxQueueWait: Double

    public init(
        maxConnections: Int, maxMessagesPerConnection: Int, idleTimeout: Double, ratePerMinute: Int? = nil,
        maxQueueWait: Double = .infinity
    ) {
        self.maxConnections = max(1, maxConnections)
        self.maxMessagesPerConnection = max(1, maxMessagesPerConnection)
        self.idleTimeout = idleTimeout
        self.ratePerMinute = ratePerMinute
        self.maxQueueWait = maxQueueWait
    }
}

public enum PoolWork: Sendable {
    case send(from: String, to: [String], data: [UInt8])
    /// Greeting, EHLO, TLS, AUTH and QUIT on a connection of its own; sends nothing.
    case verify
}

public enum PoolCompletion: Sendable {
    case sent(SendReport)
    case verified
    case failed(DeliveryError)
    /// The pool closed before the work started: nothing was sent.
    case notStarted
}
