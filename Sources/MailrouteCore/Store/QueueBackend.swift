import Foundation
import Logging

/// The seam between the daemon (and `mailroutectl`) and where the queue lives: SQLite on one
/// host (`QueueStore`), PostgreSQL for several daemons on many (`PostgresStore`, SPEC §8).
/// Everything above it is the same code on either; each backend keeps its SQL to itself.
///
/// Every operation is async: PostgreSQL answers over the network. The SQLite store's
/// operator-side methods are synchronous (one short local transaction each) and stand in for
/// the async requirements as they are.
public protocol QueueBackend: AnyObject, Sendable {
    /// How logs and `migrate` name the queue: a path, or a URL (which never holds a password).
    var location: String { get }
    /// Several daemons may share this queue: connections and probes are coordinated through it.
    var isShared: Bool { get }
    /// What one transaction costs, as the dispatcher paces its claims and outcome commits by
    /// it: while draining, claims at least `claimSpacing` seconds apart, and outcomes gathered
    /// for `commitGap` between commits, so that each takes many messages.
    var pacing: QueuePacing { get }

    func appliedMigrations() async throws -> [String]

    // MARK: Configurations
    func configs(tenant: String?) async throws -> [SMTPConfigRecord]
    func config(tenant: String, name: String) async throws -> SMTPConfigRecord?
    func config(id: Int64) async throws -> SMTPConfigRecord?
    func sealedPasswordCount() async throws -> Int
    func insertConfig(_ new: SMTPConfigRecord) async throws -> SMTPConfigRecord
    func updateConfig(_ edited: SMTPConfigRecord) async throws -> SMTPConfigRecord
    @discardableResult func deleteConfig(tenant: String, name: String) async throws -> Int
    func setDefault(tenant: String, name: String) async throws
    func setEnabled(tenant: String, name: String, enabled: Bool) async throws
    @discardableResult func recordConfigStatus(
        id: Int64, settingsVersion: Int, status: ConfigStatus, errorKind: ConfigErrorKind?, errorText: String?, firstProbeAt: Double?
    ) async throws -> Bool
    func recordProbeFailure(id: Int64, settingsVersion: Int, nextProbeAt: Double, errorText: String) async throws
    /// Takes the right to probe a configuration that is down, due at `now`, by moving its next
    /// probe to `until`: of several daemons, one wins and probes; the others see it is not due.
    func claimProbe(id: Int64, settingsVersion: Int, now: Double, until: Double) async throws -> Bool

    // MARK: Routes
    func setRoute(tenant: String, kind: RouteKind, key: String, configName: String) async throws -> RouteRecord
    func removeRoute(tenant: String, kind: RouteKind, key: String) async throws
    func routes(tenant: String?) async throws -> [RouteRecord]
    func routingTable(tenant: String?) async throws -> RoutingTable
    /// The daemon's view of the routing: cheap when nothing changed.
    func currentRouting() async throws -> RoutingTable

    // MARK: The daemon's queue work
    func hasWork(now: Double) async throws -> Bool
    func nextDueTime() async throws -> Double?
    func claimBatch(_ plan: ClaimPlan) async throws -> ClaimBatch
    /// Writes outcomes; on a shared queue only while the claim is still the row's.
    func finish(_ outcomes: [(claim: ClaimedMessage, outcome: DeliveryOutcome)]) async throws
    func releaseLeases(_ claims: [ClaimedMessage]) async throws
    /// Keeps this daemon's leases (`claims`, the rows in hand, by their tokens; the
    /// configurations whose connections it drives) alive until `until`, and says how the cluster's configurations are shared out.
    /// Where one daemon owns the queue, nothing to renew: nil.
    @discardableResult func renewLeases(now: Double, until: Double, claims: [ClaimedMessage]) async throws -> ClusterShare?
    /// Gives up every configuration this daemon drives (at shutdown, its pools all closed).
    func releaseConnections() async throws
    @discardableResult func purgeSent(before cutoff: Double, batch: Int) async throws -> Int
    func counts(now: Double) async throws -> QueueCounts
    /// The metrics' scrape-time gauges besides `counts` (`MailrouteMetrics.exposition`).
    func gauges(now: Double) async throws -> QueueGauges
    /// Something that says when others committed (new rows, changed configurations).
    func wakeups(doorbell: Doorbell) throws -> any QueueWakeups

    // MARK: Operators
    /// The message trace: what `queue list` and `GET /v1/messages` show (`MessageFilter`), newest first.
    func messages(_ filter: MessageFilter) async throws -> [MessageRecord]
    func message(id: Int64) async throws -> (MessageRecord, [AttemptRecord], [AttachmentRecord])?
    func enqueue(_ message: MessageRecord, attachments: [(filename: String, contentType: String, content: Data)]) async throws -> Int64
    /// The message an idempotency key names, if any.
    func messageID(idempotencyKey: String) async throws -> Int64?
    /// Puts failed, expired or cancelled rows (or deferred ones, early) back in line now, with a
    /// fresh count of tries; a row whose deadline has passed gets `deadline` (or it would
    /// expire again at once).
    func retry(ids: [Int64]?, onlyFailed: Bool, deadline: Double) async throws -> Int
    func cancel(id: Int64) async throws -> Bool

    /// Closes connections to the database (PostgreSQL); nothing to do for a file.
    func shutdown() async
}

public struct QueuePacing: Sendable, Equatable {
    public var claimSpacing: Double
    public var commitGap: Duration
    /// A pool that sends fast is given this much of its own work in hand, so that one claim
    /// transaction takes many messages instead of two (SQLite, measured: 16 per connection to
    /// a loopback sink nearly halved the daemon's CPU per message)...
    public var workInHandSeconds: Double
    /// ...and never more than this per connection. A pool whose server slows down meanwhile
    /// gives back what it could not start in time (`PoolLimits.maxQueueWait`), before the
    /// lease runs out.
    public var maxInHandPerConnection: Int

    /// SQLite in the process. Claims 1 ms apart take what several finished sends freed (with
    /// 1,000 pools of one message per connection, a claim per finished send cost 7 % of the
    /// rate). The 2 ms between outcome commits are the enqueuers': back to back, the daemon's
    /// commits held the write lock nearly all the time while draining, and an enqueuer (whose
    /// busy handler sleeps 1, 2, 5, 10 ms between tries) seldom got it.
    public static let local = QueuePacing(
        claimSpacing: 0.001, commitGap: .milliseconds(2), workInHandSeconds: 0.05, maxInHandPerConnection: 16)
    /// A server: each statement is a round trip and a parse, so fewer, fuller transactions, and
    /// more in hand, so that the pools do not run dry while a claim is on its way.
    public static let server = QueuePacing(
        claimSpacing: 0.005, commitGap: .milliseconds(5), workInHandSeconds: 0.15, maxInHandPerConnection: 48)
}

/// On a shared queue, who drives how many configurations' connections.
public struct ClusterShare: Sendable, Equatable {
    /// Daemons alive (renewed within a lease).
    public var daemons: Int
    /// Configurations driven by some daemon, and by this one.
    public var owned: Int
    public var mine: Int

    public init(daemons: Int, owned: Int, mine: Int) {
        self.daemons = daemons
        self.owned = owned
        self.mine = mine
    }

    /// How many of its configurations this daemon should hand over: what it holds beyond its
    /// share, rounded up, of all that are driven. Daemons that joined after the first took
    /// everything get theirs as the excess is handed over, one renewal at a time.
    public var excess: Int {
        let share = (owned + max(1, daemons) - 1) / max(1, daemons)
        return max(0, mine - share)
    }
}

/// Tells the dispatcher that someone committed. `changed()` is asked once per loop turn.
public protocol QueueWakeups: AnyObject, Sendable {
    /// Whether anything was committed since the last call.
    func changed() -> Bool
    /// While draining the dispatcher looks at the queue anyway: no need to be woken.
    func setQuiet(_ quiet: Bool)
    func cancel()
    /// What must run for the wake-ups to come (a listening connection), until cancelled.
    func run() async
}

extension QueueBackend {
    public func configs() async throws -> [SMTPConfigRecord] { try await configs(tenant: nil) }
    public func routes() async throws -> [RouteRecord] { try await routes(tenant: nil) }
    public func routingTable() async throws -> RoutingTable { try await routingTable(tenant: nil) }
    public func purgeSent(before cutoff: Double) async throws -> Int { try await purgeSent(before: cutoff, batch: 500) }
    @discardableResult
    public func recordConfigStatus(
        id: Int64, settingsVersion: Int, status: ConfigStatus, errorKind: ConfigErrorKind?, errorText: String?
    ) async throws -> Bool {
        try await recordConfigStatus(
            id: id, settingsVersion: settingsVersion, status: status, errorKind: errorKind, errorText: errorText, firstProbeAt: nil)
    }
}

/// Opens the queue the configuration names.
public enum QueueBackends {
    /// Opens (and migrates) the queue, runs `body` with it, and closes it whatever happened.
    /// A PostgreSQL client's connections live in a child task of this call: nothing outlives it.
    /// - Parameter daemon: the daemon's own writes (claims, outcomes) may trade the last
    ///   milliseconds of commits in a server crash for speed; an enqueue by `mailroutectl` may not.
    public static func with<T>(
        _ settings: MailrouteConfiguration.Queue, logger: Logger = Logger(label: "mailroute.queue"), daemon: Bool = false,
        _ body: (any QueueBackend) async throws -> T
    ) async throws -> T {
        switch settings.backend {
        case .sqlite:
            return try await body(try QueueStore(path: settings.path, logger: logger))
        case .postgres:
            let store = try PostgresStore(settings, logger: logger, daemon: daemon)
            return try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await store.runClient() }
                defer { group.cancelAll() }
                try await store.prepare()
                let result = try await body(store)
                await store.shutdown()
                return result
            }
        }
    }
}
