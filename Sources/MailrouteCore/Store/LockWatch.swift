import Foundation
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
        /// When the wait that was logged began; nil once its end was logged. A statement that
        /// gives up does not end it: the next one waits on, and the end comes once, when one
        /// gets the lock.
        var reported: ContinuousClock.Instant?
        var gaveUp = false
    }

    private let state = Mutex(State())
    private let logger: Logger
    /// A wait this long is worth a line: enqueuers' commits take milliseconds.
    static let reportAfter: Duration = .seconds(1)
    /// How many busy-handler calls a statement waits through: 100 of 0.1 ms, then 1 ms each, about 10 s.
    static let maxRetries = 10_090

    init(logger: Logger) {
        self.logger = logger
    }

    /// The busy handler: `retries` is 0 at the first call of each wait. Sleeps a little and
    /// says whether to try again. In short steps: SQLite's own busy timeout sleeps longer and
    /// longer, and an enqueuer committing thousands of times a second would win the lock
    /// nearly every time.
    func busy(retries: Int) -> Bool {
        let now = ContinuousClock.now
        let keepWaiting = retries < Self.maxRetries
        let report = state.withLock { s -> Bool in
            if retries == 0 { s.waitStart = now }
            if !keepWaiting { s.gaveUp = true }
            guard s.reported == nil, let start = s.waitStart, now - start >= Self.reportAfter else { return false }
            s.reported = start
            return true
        }
        if report {
            logger.warning("queue database locked by another connection; waiting for it (each statement gives up after 10 s)")
        }
        if keepWaiting { usleep(retries < 100 ? 100 : 1000) }
        return keepWaiting
    }

    /// From the writer, after each statement: it had the lock, or it gave up waiting.
    func statementFinished() {
        guard let since = state.withLock({ s -> ContinuousClock.Instant? in
            if s.gaveUp {
                s.gaveUp = false
                return nil
            }
            defer { (s.reported, s.waitStart) = (nil, nil) }
            return s.reported
        }) else { return }
        let waited = ContinuousClock.now - since
        let seconds = Double(waited.components.seconds) + Double(waited.components.attoseconds) / 1e18
        logger.notice("queue database lock released", metadata: ["waited": "\(Dispatcher.seconds(seconds))s"])
    }
}
