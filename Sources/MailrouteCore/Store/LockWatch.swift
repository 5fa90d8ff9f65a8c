import Logging
import Synchronization

/// Says in the log, once, that another connection has held SQLite's write lock for long (a
/// long transaction, a backup, an enqueuer's bulk load), and once that it let go. The writer
/// waits for the lock (`QueueStore`'s busy handler) rather than fail; every claim and commit
/// meanwhile waits behind it, and must not become a line of its own.
final class LockWatch: Sendable {
    private struct State {
        /// When the current wait for the lock began.
        var waitStart: ContinuousClock.Instant?
        /// When the wait that was logged began; nil once its end was logged.
        var reported: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let logger: Logger
    /// A wait this long is worth a line: enqueuers' commits take milliseconds.
    static let reportAfter: Duration = .seconds(1)

    init(logger: Logger) {
        self.logger = logger
    }

    /// From the busy handler: `retries` is 0 at the first call of each wait.
    func waiting(retries: Int) {
        let now = ContinuousClock.now
        let report = state.withLock { s -> Bool in
            if retries == 0 { s.waitStart = now }
            guard s.reported == nil, let start = s.waitStart, now - start >= Self.reportAfter else { return false }
            s.reported = start
            return true
        }
        if report {
            logger.warning("queue database locked by another connection; waiting for it (each statement gives up after 10 s)")
        }
    }

    /// From the writer, after each statement: the lock was had, or the statement gave up.
    func statementFinished() {
        guard let since = state.withLock({ s -> ContinuousClock.Instant? in
            defer { (s.reported, s.waitStart) = (nil, nil) }
            return s.reported
        }) else { return }
        let waited = ContinuousClock.now - since
        logger.notice("queue database lock released", metadata: ["waited": "\(Dispatcher.seconds(Double(waited.components.seconds) + Double(waited.components.attoseconds) / 1e18))s"])
    }
}
