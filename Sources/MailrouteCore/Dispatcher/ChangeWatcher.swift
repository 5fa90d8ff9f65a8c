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

/// Rings the doorbell when another process writes the database, so a row INSERTed while the
/// daemon idles is picked up in milliseconds without a timer: inotify on the database's
/// folder, for the database file and its WAL (every commit in WAL mode writes the WAL).
/// `ChangeWatcher`'s data_version then says whether a commit really happened.
final class WALWatcher: @unchecked Sendable {
    private let fd: Int32
    private let directory: String
    private let mask = UInt32(IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE)
    private let names: Set<String>
    private let doorbell: Doorbell
    private let stop = StopFlag()
    /// The watch on the folder; -1 while quiet.
    private let watch = Locked<Int32>(-1)
    /// Leaving quiet writes a byte here, so the thread starts its re-looks at once.
    private let wake: (read: Int32, write: Int32)

    /// nil where inotify is not available: the poll interval remains the safety net.
    init?(databasePath: String, doorbell: Doorbell) {
        let url = URL(fileURLWithPath: databasePath)
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { return nil }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            close(fd)
            return nil
        }
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        self.wake = (ends[0], ends[1])
        self.fd = fd
        self.directory = url.deletingLastPathComponent().path
        self.names = [url.lastPathComponent, url.lastPathComponent + "-wal"]
        self.doorbell = doorbell
        let wd = inotify_add_watch(fd, directory, mask)
        guard wd >= 0 else {
            close(fd)
            close(ends[0])
            close(ends[1])
            return nil
        }
        watch.withLock { $0 = wd }
        let thread = Thread { [self] in run() }
        thread.name = "mailroute-wal-watcher"
        thread.start()
    }

    /// Quiet while the dispatcher drains: it then looks at data_version every millisecond
    /// anyway, and the watch would report each of our own WAL writes — the kernel's inotify
    /// work on them took a sixth of the database writer's time (perf). Leaving quiet rings at
    /// once and starts the re-looks below: a commit made while nobody watched may still be
    /// waiting for its enqueuer's fsync.
    func setQuiet(_ quiet: Bool) {
        let changed = watch.withLock { wd -> Bool in
            if quiet, wd >= 0 {
                inotify_rm_watch(fd, wd)
                wd = -1
                return true
            }
            if !quiet, wd < 0 {
                wd = inotify_add_watch(fd, directory, mask)
                return true
            }
            return false
        }
        if changed && !quiet {
            doorbell.ring()
            var byte: UInt8 = 1
            _ = write(wake.write, &byte, 1)
        }
    }

    private var isQuiet: Bool { watch.withLock { $0 < 0 } }

    /// The thread stops within its 500 ms poll and closes the descriptor itself; nobody
    /// waits for it (the caller may be on Swift's cooperative pool).
    func cancel() {
        stop.set()
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
        // The WAL is written before the commit is published in the shared-memory index
        // (mapped, so it makes no event), and the enqueuer's fsync comes between, which takes
        // from microseconds to tens of milliseconds: after a write, look again 1 ms later,
        // then at intervals growing by half up to half a second, so a commit is seen within
        // about one and a half times its fsync. A look costs a data_version read. The waits
        // are polls of the inotify descriptor, not sleeps: a write during one rings at once
        // (a sleeping watcher made an idle pickup wait ~25 ms).
        var relook: Int32? = nil
        while !stop.isSet {
            if isQuiet { relook = nil }
            let ready = poll(&fds, 2, relook ?? 500) > 0
            var resumed = false
            if ready && fds[1].revents != 0 {
                var bytes = [UInt8](repeating: 0, count: 64)
                while read(wake.read, &bytes, bytes.count) > 0 {}
                resumed = true
            }
            if (ready && drainEvents(&buffer)) || resumed {
                doorbell.ring()
                relook = 1
            } else if let wait = relook {
                // Quiet may have begun during the poll: its re-looks are over.
                if isQuiet {
                    relook = nil
                    continue
                }
                doorbell.ring()
                relook = wait >= 512 ? nil : max(wait + 1, wait * 3 / 2)
            }
        }
        close(fd)
        close(wake.read)
        close(wake.write)
    }

    /// Reads every pending event; whether any was about the database or its WAL.
    private func drainEvents(_ buffer: inout [UInt8]) -> Bool {
        var relevant = false
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return relevant }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= n {
                let length = buffer.withUnsafeBytes { Int($0.load(fromByteOffset: offset + 12, as: UInt32.self)) }
                let nameStart = offset + MemoryLayout<inotify_event>.size
                let name = buffer[nameStart..<min(n, nameStart + length)].prefix { $0 != 0 }
                if names.contains(String(decoding: name, as: UTF8.self)) { relevant = true }
                offset = nameStart + length
            }
        }
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
public final class Doorbell: @unchecked Sendable {
    private let lock = NSLock()
    private var rung = false
    private var waiter: CheckedContinuation<Void, Never>?

    public init() {}

    public func ring() {
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
    /// The timer is a child task, so it runs wherever the loop runs and ends with the wait.
    public func wait(timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                // Cancelled when a ring came first; otherwise its own ring ends the wait.
                if (try? await Task.sleep(for: timeout)) != nil { self.ring() }
            }
            group.addTask { await self.untilRung() }
            await group.next()
            group.cancelAll()
        }
    }

    private func untilRung() async {
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
    }
}

/// SQLite's wake-ups: `data_version` says whether anyone committed, inotify on the WAL rings
/// the doorbell when someone does (`WALWatcher`).
final class SQLiteWakeups: QueueWakeups, @unchecked Sendable {
    // One caller (the dispatcher's loop) asks `changed()`; the lock is for the type checker.
    private let watcher: Locked<ChangeWatcher>
    private let wal: WALWatcher?

    init(path: String, doorbell: Doorbell) throws {
        watcher = Locked(try ChangeWatcher(path: path))
        wal = WALWatcher(databasePath: path, doorbell: doorbell)
    }

    func changed() -> Bool { watcher.withLock { $0.changed() } }
    func setQuiet(_ quiet: Bool) { wal?.setQuiet(quiet) }
    func cancel() { wal?.cancel() }
    /// The WAL watcher has a thread of its own.
    func run() async {}
}
