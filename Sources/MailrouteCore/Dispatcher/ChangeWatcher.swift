import Foundation
import GRDB

/// Notices commits by any other connection (enqueuers, the CLI, our own writer) through
/// `PRAGMA data_version` on a connection of its own: a microsecond check, so the dispatcher
/// can look often without loading the machine.
final class ChangeWatcher {
    private let queue: DatabaseQueue
    private var last: Int?

    init(path: String) throws {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(1)
        queue = try DatabaseQueue(path: path, configuration: configuration)
    }

    /// Whether anything was committed since the last call.
    func changed() -> Bool {
        let version = try? queue.inDatabase { db in try Int.fetchOne(db, sql: "PRAGMA data_version") }
        defer { last = version }
        return version != last
    }
}

/// Set from a signal handler's context, read by the loop.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

/// Wakes the dispatcher's loop early, when a delivery finishes and a pool has room again.
/// (Not an AsyncStream: cancelling a task that waits on one finishes the stream for good.)
final class Doorbell: @unchecked Sendable {
    private let lock = NSLock()
    private var rung = false
    private var waiter: CheckedContinuation<Void, Never>?

    func ring() {
        lock.lock()
        if let waiter {
            self.waiter = nil
            lock.unlock()
            waiter.resume()
        } else {
            rung = true
            lock.unlock()
        }
    }

    /// Returns at the first ring (or one that came since the last wait), or after `timeout`.
    func wait(timeout: Duration) async {
        let timer = Task { [self] in
            if (try? await Task.sleep(for: timeout)) != nil { ring() }
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            lock.lock()
            if rung {
                rung = false
                lock.unlock()
                continuation.resume()
            } else {
                waiter = continuation
                lock.unlock()
            }
        }
        timer.cancel()
    }
}
