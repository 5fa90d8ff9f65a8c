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
