import CCurl
import Foundation

/// One libcurl multi handle and the one OS thread that drives it, for every pool in the process.
///
/// Other threads talk to it only through `submit` (a locked inbox) and `curl_multi_wakeup`,
/// which libcurl allows from any thread. Everything else (the multi handle, the pools' queues,
/// easy handles and shares) belongs to the engine thread: that is the invariant behind
/// `@unchecked Sendable`. The thread never waits on Swift concurrency: a completion resumes a
/// continuation and returns.
///
/// Per pool: a FIFO of sends, at most `maxConnections` easy handles ("slots") in the multi
/// handle at once, and one `CURLSH` that shares connections, which `curl_multi_add_handle`
/// makes the slot's connection cache instead of the multi handle's (lib/multi.c, 7.88).
/// Connections stay in that cache between messages; after `idleTimeout` without work the
/// slots and the share go to the closer, whose `curl_share_cleanup` QUITs them.
final class CurlMultiEngine: @unchecked Sendable {
    static let shared = CurlMultiEngine()

    struct Job: Sendable {
        var from: String
        var to: [String]
        var data: [UInt8]
        var done: @Sendable (PoolCompletion) -> Void
    }

    enum Command: Sendable {
        case register(id: Int, name: String, endpoint: SMTPEndpoint, limits: PoolLimits, shared: PoolShared)
        case send(pool: Int, Job)
        /// Queued work completes `.notStarted`; transfers in hand finish; then the connections QUIT.
        case close(pool: Int)
        /// The pool object is gone: close without anyone waiting.
        case release(pool: Int)
    }

    // Shared with other threads.
    private let multi: UnsafeMutableRawPointer
    private let inbox = Locked<[Command]>([])
    private let nextPoolID = Locked(0)
    private let closer = Closer()

    // The engine thread's own.
    private var pools: [Int: PoolState] = [:]
    private var transfers: [UnsafeMutableRawPointer: (pool: PoolState, slot: Slot)] = [:]
    private var timers = TimerHeap()
    private var dirty: Set<Int> = []

    private init() {
        _ = Curl.initialized
        multi = curl_multi_init()!
        // Each share is a cache of its own, counted against this: no pool's idle connections
        // may be closed because others have many (7.88's default is 4 × handles in the multi).
        _ = mr_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, 1_000_000)
        let thread = Thread { [self] in
            nameThisThread("mailroute-curl")
            run()
        }
        thread.name = "mailroute-curl"
        thread.start()
    }

    // MARK: - Any thread

    func register(name: String, endpoint: SMTPEndpoint, limits: PoolLimits, shared: PoolShared) -> Int {
        let id = nextPoolID.withLock { id -> Int in
            id += 1
            return id
        }
        submit(.register(id: id, name: name, endpoint: endpoint, limits: limits, shared: shared))
        return id
    }

    func submit(_ command: Command) {
        inbox.withLock { $0.append(command) }
        curl_multi_wakeup(multi)
    }

    // MARK: - The engine thread

    private func run() {
        var running: Int32 = 0
        while true {
            let commands = inbox.withLock { commands -> [Command] in
                defer { commands.removeAll(keepingCapacity: true) }
                return commands
            }
            for command in commands { apply(command) }
            let now = Monotonic.now()
            while let due = timers.popDue(now) {
                if let pool = pools[due.pool] {
                    if pool.armed == due.at { pool.armed = nil }
                    dirty.insert(due.pool)
                }
            }
            let serviced = dirty
            dirty.removeAll(keepingCapacity: true)
            for id in serviced {
                if let pool = pools[id] { service(pool, now: now) }
            }
            curl_multi_perform(multi, &running)
            if readCompletions() > 0 || !dirty.isEmpty { continue }
            // libcurl shortens this to its own next timeout; a submit wakes it early.
            curl_multi_poll(multi, nil, 0, pollTimeout(now: Monotonic.now()), nil)
        }
    }

    private func pollTimeout(now: Double) -> Int32 {
        guard let next = timers.earliest else { return 10_000 }
        let ms = ((next - now) * 1000).rounded(.up)
        return Int32(max(0, min(10_000, ms)))
    }

    private func apply(_ command: Command) {
        switch command {
        case .register(let id, let name, let endpoint, let limits, let shared):
            pools[id] = PoolState(id: id, name: name, endpoint: endpoint, limits: limits, shared: shared)
        case .send(let id, let job):
            guard let pool = pools[id], !pool.closing else {
                job.done(.notStarted)
                return
            }
            pool.queue.append(job)
            pool.lastActive = Monotonic.now()
            dirty.insert(id)
        case .close(let id), .release(let id):
            guard let pool = pools[id], !pool.closing else { return }
            pool.closing = true
            let abandoned = pool.queue
            pool.queue.removeAll()
            for job in abandoned { job.done(.notStarted) }
            dirty.insert(id)
        }
    }

    /// Starts what may start, and tears down what has been idle or is closing.
    private func service(_ pool: PoolState, now: Double) {
        if pool.closing {
            if pool.inFlight == 0 {
                pools.removeValue(forKey: pool.id)
                let shared = pool.shared
                teardown(pool) { shared.markEngineDone() }
            }
            return
        }
        while pool.inFlight < pool.limits.maxConnections, let job = pool.queue.first {
            if let interval = pool.sendInterval {
                // Scheduled, never slept: the poll timeout includes the next allowed time.
                guard now >= pool.nextSendAt else {
                    arm(pool, at: pool.nextSendAt)
                    break
                }
                pool.nextSendAt = max(now, pool.nextSendAt) + interval
            }
            pool.queue.removeFirst()
            start(job, in: pool)
        }
        if pool.queue.isEmpty, pool.inFlight == 0, pool.share != nil {
            let deadline = pool.lastActive + pool.limits.idleTimeout
            if now >= deadline {
                teardown(pool, then: nil)
            } else {
                arm(pool, at: deadline)
            }
        }
    }

    private func arm(_ pool: PoolState, at time: Double) {
        if let armed = pool.armed, armed <= time { return }
        pool.armed = time
        timers.push(at: time, pool: pool.id)
    }

    private func start(_ job: Job, in pool: PoolState) {
        let slot: Slot
        if let idle = pool.idleSlots.popLast() {
            slot = idle
        } else {
            slot = Slot(easy: SMTPEasyHandle(endpoint: pool.endpoint))
            slot.easy.setShare(pool.ensureShare())
        }
        slot.job = job
        slot.retried = false
        slot.closeAfter = slot.sentOnConnection + 1 >= pool.limits.maxMessagesPerConnection
        pool.inFlight += 1
        slot.easy.beginSend(from: job.from, to: job.to, data: job.data, closeAfter: slot.closeAfter)
        add(slot, in: pool)
    }

    private func add(_ slot: Slot, in pool: PoolState) {
        let code = curl_multi_add_handle(multi, slot.easy.handle)
        if code == CURLM_OK {
            transfers[slot.easy.handle] = (pool, slot)
        } else {
            let error = DeliveryError(
                kind: .unknown, text: "libcurl refused the transfer: \(String(cString: curl_multi_strerror(code)))", isTemporary: true)
            slot.easy.abandonSend()
            done(slot, in: pool, .failed(error), connectionClosed: true)
        }
    }

    private func readCompletions() -> Int {
        var count = 0
        var left: Int32 = 0
        while let message = curl_multi_info_read(multi, &left) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
            let code = Int(mr_curl_msg_result(message).rawValue)
            curl_multi_remove_handle(multi, easy)
            guard let (pool, slot) = transfers.removeValue(forKey: easy) else { continue }
            count += 1
            finished(slot, in: pool, code: code)
        }
        return count
    }

    private func finished(_ slot: Slot, in pool: PoolState, code: Int) {
        let attempt = slot.easy.finishSend(code: code)
        if attempt.retryOnFreshConnection, !slot.retried, let job = slot.job {
            slot.retried = true
            slot.easy.beginSend(from: job.from, to: job.to, data: job.data, freshConnection: true, closeAfter: slot.closeAfter)
            add(slot, in: pool)
            return
        }
        switch attempt.result {
        case .success(let report):
            if slot.closeAfter {
                slot.sentOnConnection = 0
            } else {
                slot.sentOnConnection = report.newConnection ? 1 : slot.sentOnConnection + 1
            }
            done(slot, in: pool, .sent(report), connectionClosed: slot.closeAfter)
        case .failure(let error):
            done(slot, in: pool, .failed(error), connectionClosed: true)
        }
    }

    private func done(_ slot: Slot, in pool: PoolState, _ completion: PoolCompletion, connectionClosed: Bool) {
        if connectionClosed { slot.sentOnConnection = 0 }
        let job = slot.job
        slot.job = nil
        pool.inFlight -= 1
        pool.idleSlots.append(slot)
        pool.lastActive = Monotonic.now()
        dirty.insert(pool.id)
        job?.done(completion)
    }

    /// Hands the pool's easy handles and share to the closer: `curl_share_cleanup` QUITs the
    /// cached connections, and libcurl waits for each 221 (up to the command timeout), which
    /// must not stall every other pool. The pool builds new ones on demand.
    private func teardown(_ pool: PoolState, then: (@Sendable () -> Void)?) {
        guard let share = pool.share else {
            then?()
            return
        }
        let teardown = Teardown(share: share, then: then)
        for slot in pool.idleSlots { teardown.handles.append(slot.easy) }
        pool.idleSlots.removeAll()
        pool.share = nil
        closer.enqueue(teardown)
    }
}

// MARK: - Engine-thread state

private final class PoolState {
    let id: Int
    let name: String
    let endpoint: SMTPEndpoint
    let limits: PoolLimits
    let shared: PoolShared
    let sendInterval: Double?
    var queue: [CurlMultiEngine.Job] = []
    var idleSlots: [Slot] = []
    var inFlight = 0
    var share: UnsafeMutableRawPointer?
    var nextSendAt = -Double.infinity
    var lastActive = Monotonic.now()
    var closing = false
    /// The earliest timer pending for this pool.
    var armed: Double?

    init(id: Int, name: String, endpoint: SMTPEndpoint, limits: PoolLimits, shared: PoolShared) {
        self.id = id
        self.name = name
        self.endpoint = endpoint
        self.limits = limits
        self.shared = shared
        sendInterval = limits.ratePerMinute.flatMap { $0 > 0 ? 60.0 / Double($0) : nil }
    }

    /// This pool's own connection cache.
    func ensureShare() -> UnsafeMutableRawPointer {
        if let share { return share }
        let share = curl_share_init()!
        _ = mr_curl_share_connections(share)
        self.share = share
        return share
    }
}

/// One easy handle of a pool, and the message in hand.
private final class Slot {
    let easy: SMTPEasyHandle
    var job: CurlMultiEngine.Job?
    var retried = false
    var closeAfter = false
    /// Messages sent on the connection this slot last used.
    var sentOnConnection = 0

    init(easy: SMTPEasyHandle) { self.easy = easy }
}

/// Deadlines, earliest first (a binary heap). Stale entries are harmless: a pool serviced
/// early re-arms what it still needs.
private struct TimerHeap {
    private var items: [(at: Double, pool: Int)] = []

    var earliest: Double? { items.first?.at }

    mutating func push(at: Double, pool: Int) {
        items.append((at, pool))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].at < items[parent].at else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func popDue(_ now: Double) -> (at: Double, pool: Int)? {
        guard let first = items.first, first.at <= now else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count, items[l].at < items[m].at { m = l }
                if r < items.count, items[r].at < items[m].at { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return first
    }
}

// MARK: - Closing connections off the engine thread

/// A pool's easy handles and share, handed from the engine thread to a closer thread, which
/// is their only user from then on.
private final class Teardown: @unchecked Sendable {
    var handles: [SMTPEasyHandle] = []
    private let share: UnsafeMutableRawPointer
    private let then: (@Sendable () -> Void)?

    init(share: UnsafeMutableRawPointer, then: (@Sendable () -> Void)?) {
        self.share = share
        self.then = then
    }

    func run() {
        // A share still attached to an easy handle is "in use" and cleans up nothing: detach
        // each one here rather than trust that this thread drops the last reference.
        for easy in handles { easy.setShare(nil) }
        handles.removeAll()
        // QUITs each cached connection and waits for its 221 (at most the command timeout).
        let code = curl_share_cleanup(share)
        if code != CURLSHE_OK {
            FileHandle.standardError.write(Data("mailroute: curl_share_cleanup: \(String(cString: curl_share_strerror(code)))\n".utf8))
        }
        then?()
    }
}

/// Up to two threads that close connections (QUIT) so the engine thread never waits on a
/// server's 221; they exit when there is nothing to close.
private final class Closer: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [Teardown] = []
    private var workers = 0
    private var idle = 0
    private let maxWorkers = 2

    func enqueue(_ teardown: Teardown) {
        condition.lock()
        queue.append(teardown)
        let spawn = idle == 0 && workers < maxWorkers
        if spawn { workers += 1 }
        condition.signal()
        condition.unlock()
        if spawn {
            let thread = Thread { [self] in
                nameThisThread("mailroute-quit")
                while let next = next() { next.run() }
            }
            thread.name = "mailroute-quit"
            thread.start()
        }
    }

    private func next() -> Teardown? {
        condition.lock()
        defer { condition.unlock() }
        while queue.isEmpty {
            idle += 1
            let woke = condition.wait(until: Date().addingTimeInterval(2))
            idle -= 1
            if !woke && queue.isEmpty {
                workers -= 1
                return nil
            }
        }
        return queue.removeFirst()
    }
}

// MARK: - Small things

/// A value behind a lock.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

/// Names the calling thread as `ps -L` and /proc/self/task/*/comm show it (15 bytes at most).
/// Foundation passes a name to the OS thread only when the thread sets its own.
func nameThisThread(_ name: String) {
    Thread.current.name = name
}

/// Seconds on a clock that does not jump with the wall clock.
enum Monotonic {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
