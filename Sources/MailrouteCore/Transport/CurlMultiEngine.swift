import CCurl
import Foundation

/// One libcurl multi handle and the one OS thread that drives it, for every pool in the process.
///
/// Other threads talk to it only through `submit` (a locked inbox) and `curl_multi_wakeup`,
/// which libcurl allows from any thread. Everything else (the multi handle, the pools' queues,
/// their slots and connections) belongs to the engine thread: that is the invariant behind
/// `@unchecked Sendable`. The thread never waits on Swift concurrency (a completion resumes a
/// continuation and returns) and never waits on a server.
///
/// A pool has a FIFO of sends and at most `maxConnections` slots. A slot is one connection:
/// an easy handle with `CURLOPT_CONNECT_ONLY`, which the multi handle drives through connect,
/// greeting, EHLO, STARTTLS or implicit TLS and AUTH without blocking, and a `CURLSH` that is
/// that connection's own cache. Once connected, the slot sends each message itself
/// (`SMTPTransaction` over `curl_easy_send`/`curl_easy_recv`, polled here as extra fds of
/// `curl_multi_poll`) and QUITs itself: libcurl's own SMTP transfer waits for the reply to the
/// end of DATA, and its disconnect for the reply to QUIT, in blocking poll loops even in the
/// multi interface (lib/smtp.c, `smtp_block_statemach`), which would let one slow server stall
/// every pool. A connection is never in a cache another slot looks in, so it carries one
/// configuration's mail only.
final class CurlMultiEngine: @unchecked Sendable {
    static let shared = CurlMultiEngine()

    struct Job: Sendable {
        var from: String
        var to: [String]
        var data: [UInt8]
        var done: @Sendable (PoolCompletion) -> Void
        /// When the engine took it (its clock), for `PoolLimits.maxQueueWait`.
        var queuedAt = 0.0
    }

    enum Command: Sendable {
        case register(id: Int, name: String, endpoint: SMTPEndpoint, limits: PoolLimits, shared: PoolShared)
        case send(pool: Int, Job)
        /// Queued work completes `.notStarted`; sends in hand finish; then the connections QUIT.
        case close(pool: Int)
        /// The pool object is gone: close without anyone waiting.
        case release(pool: Int)
    }

    // Shared with other threads.
    private let multi: UnsafeMutableRawPointer
    /// Commands, and whether the loop sleeps in its poll (only then does a submit wake it).
    private let inbox = Locked<Inbox>(Inbox())
    private struct Inbox {
        var commands: [Command] = []
        var sleeping = false
    }
    private let nextPoolID = Locked(0)

    // The engine thread's own.
    private var pools: [Int: PoolState] = [:]
    /// Slots whose connect-only transfer libcurl is running, by easy handle.
    private var connecting: [UnsafeMutableRawPointer: Slot] = [:]
    /// Slots with an open connection, which this thread polls.
    private var connected: [ObjectIdentifier: Slot] = [:]
    private var timers = TimerHeap()
    private var dirty: Set<Int> = []
    private var readBuffer = [UInt8](repeating: 0, count: 16384)

    private init() {
        _ = Curl.initialized
        multi = curl_multi_init()!
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

    /// A busy loop takes the command on its next turn; waking it anyway cost a syscall and a
    /// turn over every connection per message.
    func submit(_ command: Command) {
        let wake = inbox.withLock { inbox -> Bool in
            inbox.commands.append(command)
            defer { inbox.sleeping = false }
            return inbox.sleeping
        }
        if wake { curl_multi_wakeup(multi) }
    }

    // MARK: - The loop

    private func run() {
        var running: Int32 = 0
        var fds: [curl_waitfd] = []
        var owners: [Slot] = []
        while true {
            let commands = inbox.withLock { inbox -> [Command] in
                defer { inbox.commands.removeAll(keepingCapacity: true) }
                return inbox.commands
            }
            for command in commands { apply(command) }
            var now = Monotonic.now()
            while let due = timers.popDue(now) {
                if let pool = pools[due.pool] {
                    if pool.armed == due.at { pool.armed = nil }
                    dirty.insert(due.pool)
                }
            }
            serviceDirty(now)
            // Connects, TLS and AUTH: libcurl's part.
            curl_multi_perform(multi, &running)
            readConnects()
            if !dirty.isEmpty { continue }

            // The slots' own conversations, and idle connections the server may close.
            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            var wake = timers.earliest ?? .infinity
            for slot in connected.values {
                guard let connection = slot.connection else { continue }
                var events = Int16(CURL_WAIT_POLLIN)
                if slot.hasOutput { events |= Int16(CURL_WAIT_POLLOUT) }
                fds.append(curl_waitfd(fd: connection.socket, events: events, revents: 0))
                owners.append(slot)
                if slot.phase != .idle { wake = min(wake, slot.deadline) }
            }
            var timeout = wake == .infinity ? 10_000 : Int32(max(0, min(10_000, ((wake - now) * 1000).rounded(.up))))
            // A command that came since the top of the loop is not waited for.
            let sleeping = inbox.withLock { inbox -> Bool in
                inbox.sleeping = inbox.commands.isEmpty
                return inbox.sleeping
            }
            if !sleeping { timeout = 0 }
            // libcurl shortens the timeout to its own next one; a submit wakes it early.
            _ = fds.withUnsafeMutableBufferPointer { buffer in
                curl_multi_poll(multi, buffer.baseAddress, UInt32(buffer.count), timeout, nil)
            }
            inbox.withLock { $0.sleeping = false }
            now = Monotonic.now()
            for (i, slot) in owners.enumerated() where fds[i].revents != 0 {
                pump(slot, now: now)
            }
            for slot in owners where slot.phase != .idle && slot.connection != nil && now >= slot.deadline {
                timedOut(slot, now: now)
            }
        }
    }

    private func apply(_ command: Command) {
        switch command {
        case .register(let id, let name, let endpoint, let limits, let shared):
            pools[id] = PoolState(id: id, name: name, endpoint: endpoint, limits: limits, shared: shared)
        case .send(let id, var job):
            guard let pool = pools[id], !pool.closing else {
                job.done(.notStarted)
                return
            }
            job.queuedAt = Monotonic.now()
            pool.queue.append(job)
            pool.lastActive = job.queuedAt
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

    private func serviceDirty(_ now: Double) {
        while !dirty.isEmpty {
            let serviced = dirty
            dirty.removeAll(keepingCapacity: true)
            for id in serviced {
                if let pool = pools[id] { service(pool, now: now) }
            }
        }
    }

    /// Starts what may start; QUITs and drops the connections of a pool that closes or has
    /// been idle for `idleTimeout`.
    private func service(_ pool: PoolState, now: Double) {
        if pool.limits.maxQueueWait.isFinite {
            while let first = pool.queue.first, now - first.queuedAt >= pool.limits.maxQueueWait {
                pool.queue.removeFirst()
                first.done(.notStarted)
            }
            if let first = pool.queue.first { arm(pool, at: first.queuedAt + pool.limits.maxQueueWait) }
        }
        if !pool.closing {
            while !pool.queue.isEmpty, let slot = pool.freeSlot() {
                if let interval = pool.sendInterval {
                    // Scheduled, never slept: the poll timeout includes the next allowed time.
                    guard now >= pool.nextSendAt else {
                        arm(pool, at: pool.nextSendAt)
                        break
                    }
                    pool.nextSendAt = max(now, pool.nextSendAt) + interval
                }
                start(pool.queue.removeFirst(), on: slot, now: now)
            }
        }
        guard pool.queue.isEmpty, pool.inFlight == 0, !pool.slots.isEmpty || pool.closing else { return }
        if !pool.closing {
            let deadline = pool.lastActive + pool.limits.idleTimeout
            guard now >= deadline else {
                arm(pool, at: deadline)
                return
            }
        }
        for slot in pool.slots where slot.phase == .idle {
            if slot.connection != nil {
                quit(slot, now: now)
            } else {
                dispose(slot)
            }
        }
        if pool.closing && pool.slots.isEmpty {
            pools.removeValue(forKey: pool.id)
            pool.shared.markEngineDone()
        }
    }

    private func arm(_ pool: PoolState, at time: Double) {
        if let armed = pool.armed, armed <= time { return }
        pool.armed = time
        timers.push(at: time, pool: pool.id)
    }

    // MARK: - A message on a slot

    private func start(_ job: Job, on slot: Slot, now: Double) {
        let pool = slot.pool
        slot.job = job
        slot.retried = false
        slot.startedAt = now
        pool.inFlight += 1
        slot.easy.resetConversation()
        if let connection = slot.connection, now - connection.lastUsed > pool.endpoint.maxIdleSeconds {
            // Too long idle to trust; the server may have dropped it without a word.
            close(slot)
        }
        if slot.connection != nil {
            converse(slot, reused: true, now: now)
        } else {
            connect(slot)
        }
        pool.publishConnections()
    }

    /// libcurl's part: TCP, greeting, EHLO, STARTTLS or TLS, AUTH.
    private func connect(_ slot: Slot) {
        slot.phase = .connecting
        let code = curl_multi_add_handle(multi, slot.easy.handle)
        guard code == CURLM_OK else {
            slot.phase = .idle
            finish(slot, .failed(DeliveryError(
                kind: .unknown, text: "libcurl refused the transfer: \(String(cString: curl_multi_strerror(code)))", isTemporary: true)))
            return
        }
        connecting[slot.easy.handle] = slot
    }

    private func readConnects() {
        var left: Int32 = 0
        while let message = curl_multi_info_read(multi, &left) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                let slot = connecting.removeValue(forKey: easy)
            else { continue }
            let code = Int(mr_curl_msg_result(message).rawValue)
            let now = Monotonic.now()
            if code == Int(CURLE_OK.rawValue) {
                // The handle stays in the multi handle: removing a connect-only handle closes its connection.
                slot.connection = Slot.Connection(
                    socket: slot.easy.activeSocket, capabilities: SMTPTransaction.Capabilities(slot.easy.transcript), lastUsed: now)
                connected[ObjectIdentifier(slot)] = slot
                slot.pool.publishConnections()
                converse(slot, reused: false, now: now)
            } else {
                let error = slot.easy.failure(code)
                curl_multi_remove_handle(multi, easy)
                slot.phase = .idle
                finish(slot, .failed(error))
            }
        }
    }

    /// Our part: MAIL, RCPT, DATA, the message.
    private func converse(_ slot: Slot, reused: Bool, now: Double) {
        guard let job = slot.job, let connection = slot.connection else { return }
        if reused { slot.easy.resetConversation() }
        slot.reused = reused
        var transaction = SMTPTransaction(from: job.from, to: job.to, message: job.data, capabilities: connection.capabilities)
        slot.output(transaction.begin(&slot.easy.capture.transcript))
        slot.transaction = transaction
        slot.phase = .sending
        slot.deadline = now + slot.pool.endpoint.commandTimeoutSeconds
        pump(slot, now: now)
    }

    /// Writes what the slot has to say and reads what the server said, until neither can go on.
    private func pump(_ slot: Slot, now: Double) {
        while slot.connection != nil {
            var progressed = false
            while slot.hasOutput {
                var sent = 0
                let code = slot.pendingOutput { curl_easy_send(slot.easy.handle, $0.baseAddress, $0.count, &sent) }
                if code == CURLE_AGAIN { break }
                guard code == CURLE_OK else {
                    lost(slot, code: Int(code.rawValue), message: "Send failure: \(String(cString: curl_easy_strerror(code)))", now: now)
                    return
                }
                guard sent > 0 else { break }
                slot.wrote(sent)
                progressed = true
                // Progress resets the clock, as CURLOPT_LOW_SPEED_TIME would during an upload.
                slot.deadline = now + slot.pool.endpoint.commandTimeoutSeconds
            }
            var received = 0
            let code = readBuffer.withUnsafeMutableBytes { curl_easy_recv(slot.easy.handle, $0.baseAddress, $0.count, &received) }
            if code == CURLE_AGAIN {
                if !progressed { return }
                continue
            }
            guard code == CURLE_OK, received > 0 else {
                lost(slot, code: FailureClassifier.Code.recvError, message: "response reading failed", now: now)
                return
            }
            heard(slot, readBuffer[..<received], now: now)
        }
    }

    private func heard(_ slot: Slot, _ bytes: ArraySlice<UInt8>, now: Double) {
        switch slot.phase {
        case .sending:
            // In place: a copy out and back would copy the transaction's buffers on every read.
            guard slot.transaction != nil else { return }
            let heardBefore = slot.transaction!.replies
            let event = slot.transaction!.receive(bytes, &slot.easy.capture.transcript)
            if slot.transaction!.replies != heardBefore { slot.deadline = now + slot.pool.endpoint.commandTimeoutSeconds }
            // A final reply before the whole message went out (a server cutting DATA short),
            // or a refusal with pipelined replies still owed, leaves the conversation out of
            // step: that connection is closed, not reused.
            let outOfStep: Bool
            if case .finished = event, slot.hasOutput || slot.transaction!.owesReplies {
                slot.clearOutput()
                outOfStep = true
            } else {
                outOfStep = false
            }
            switch event {
            case .wait:
                break
            case .send(let output):
                slot.output(output)
                slot.deadline = now + slot.pool.endpoint.commandTimeoutSeconds
            case .finished(.accepted):
                sent(slot, now: now)
                if outOfStep { close(slot) }
            case .finished(.failed(let code, let message, let response)):
                if outOfStep { close(slot) }
                refused(slot, code: code, message: message, response: response, now: now)
            }
        case .quitting:
            slot.easy.capture.transcript.append(.server, chunk: String(decoding: bytes, as: UTF8.self))
            if bytes.contains(UInt8(ascii: "\n")) { quitDone(slot) }
        case .idle, .connecting:
            // Unasked: a server closing an idle connection says 421 first. Start afresh next time.
            close(slot)
        }
    }

    private func sent(_ slot: Slot, now: Double) {
        guard var connection = slot.connection else { return }
        let report = SendReport(slot.easy.transcript, newConnection: !slot.reused)
        connection.messages += 1
        connection.lastUsed = now
        slot.connection = connection
        slot.transaction = nil
        slot.phase = .idle
        finish(slot, .sent(report))
        if connection.messages >= slot.pool.limits.maxMessagesPerConnection { quit(slot, now: now) }
    }

    /// A reply that ends the transaction: the connection is still sound, and QUITs.
    private func refused(_ slot: Slot, code: Int, message: String, response: Int, now: Double) {
        let error = FailureClassifier.classify(
            curlCode: code, errorMessage: message, responseCode: response, transcript: slot.easy.transcript,
            reusedConnection: slot.reused)
        slot.transaction = nil
        slot.phase = .idle
        // libcurl closes the connection after a refused MAIL or RCPT; so do we, politely.
        quit(slot, now: now)
        finish(slot, .failed(error))
    }

    /// The connection broke (or fell silent): closed at once; the send is retried once on a
    /// fresh connection when the rule allows.
    private func lost(_ slot: Slot, code: Int, message: String, now: Double) {
        let phase = slot.phase
        var response = 0
        if let reply = slot.easy.transcript.lastReply { response = reply.code }
        close(slot)
        switch phase {
        case .sending:
            let error = FailureClassifier.classify(
                curlCode: code, errorMessage: message, responseCode: response, transcript: slot.easy.transcript,
                reusedConnection: slot.reused)
            let attempt = SendAttempt(result: .failure(error), reused: slot.reused, lastCommand: slot.easy.transcript.lastCommand)
            if attempt.retryOnFreshConnection && !slot.retried {
                slot.retried = true
                slot.easy.resetConversation()
                connect(slot)
            } else {
                finish(slot, .failed(error))
            }
        case .quitting:
            quitDone(slot)
        case .idle, .connecting:
            break
        }
    }

    private func timedOut(_ slot: Slot, now: Double) {
        switch slot.phase {
        case .sending:
            lost(slot, code: FailureClassifier.Code.operationTimedOut, message: "server response timeout", now: now)
        case .quitting:
            quitDone(slot)
        case .idle, .connecting:
            break
        }
    }

    private func finish(_ slot: Slot, _ completion: PoolCompletion) {
        let pool = slot.pool
        let job = slot.job
        slot.job = nil
        pool.inFlight -= 1
        pool.lastActive = Monotonic.now()
        pool.shared.noteTry(seconds: pool.lastActive - slot.startedAt)
        pool.publishConnections()
        dirty.insert(pool.id)
        job?.done(completion)
    }

    // MARK: - Connections

    /// QUIT, and wait for the reply a little (at most 2 s, or the command timeout).
    private func quit(_ slot: Slot, now: Double) {
        guard slot.connection != nil else { return }
        slot.phase = .quitting
        slot.easy.capture.transcript.append(.client, chunk: "QUIT")
        slot.output(Array("QUIT\r\n".utf8))
        slot.deadline = now + min(2, slot.pool.endpoint.commandTimeoutSeconds)
        pump(slot, now: now)
    }

    private func quitDone(_ slot: Slot) {
        close(slot)
        dirty.insert(slot.pool.id)
    }

    /// Closes the connection without a word: removing a connect-only handle from the multi
    /// handle closes its connection at once (lib/multi.c), with no QUIT.
    private func close(_ slot: Slot) {
        guard slot.connection != nil else { return }
        curl_multi_remove_handle(multi, slot.easy.handle)
        connected.removeValue(forKey: ObjectIdentifier(slot))
        slot.connection = nil
        slot.transaction = nil
        slot.clearOutput()
        slot.phase = .idle
        slot.pool.publishConnections()
    }

    /// The slot's handle and share go; its cache is empty, so this waits for nothing.
    private func dispose(_ slot: Slot) {
        close(slot)
        slot.pool.slots.removeAll { $0 === slot }
        slot.dispose()
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
    var slots: [Slot] = []
    /// Sends in hand.
    var inFlight = 0
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

    /// Counted on the engine thread, where the slots are; a scrape reads the copy in `shared`.
    /// At most `maxConnections` slots, so the count costs little beside a message's work.
    func publishConnections() {
        var counted = PoolConnections()
        for slot in slots where slot.connection != nil {
            counted.open += 1
            if slot.job != nil { counted.busy += 1 }
        }
        shared.connections = counted
    }

    /// An idle slot, one with an open connection first; or a new one within the limit.
    func freeSlot() -> Slot? {
        if let slot = slots.first(where: { $0.phase == .idle && $0.job == nil && $0.connection != nil }) { return slot }
        if let slot = slots.first(where: { $0.phase == .idle && $0.job == nil }) { return slot }
        guard slots.count < limits.maxConnections else { return nil }
        let slot = Slot(pool: self)
        slots.append(slot)
        return slot
    }
}

/// One connection of a pool, and the message in hand.
private final class Slot {
    enum Phase { case idle, connecting, sending, quitting }

    struct Connection {
        var socket: curl_socket_t
        var capabilities: SMTPTransaction.Capabilities
        var messages = 0
        var lastUsed: Double
    }

    unowned let pool: PoolState
    let easy: SMTPEasyHandle
    private var share: UnsafeMutableRawPointer?
    var phase = Phase.idle
    var connection: Connection?
    var job: CurlMultiEngine.Job?
    var transaction: SMTPTransaction?
    var reused = false
    var retried = false
    var deadline = Double.infinity
    /// When the message in hand was started on this slot.
    var startedAt = 0.0
    private var outbox: [UInt8] = []
    private var written = 0

    init(pool: PoolState) {
        self.pool = pool
        easy = SMTPEasyHandle(endpoint: pool.endpoint, connectOnly: true)
        // Its own connection cache: libcurl prunes the idle connections of a cache it looks
        // in, and a connect-only connection between our commands looks idle to it.
        let share = curl_share_init()!
        _ = mr_curl_share_connections(share)
        easy.setShare(share)
        self.share = share
    }

    var hasOutput: Bool { written < outbox.count }

    func output(_ bytes: [UInt8]) {
        if hasOutput {
            outbox += bytes
        } else {
            outbox = bytes
            written = 0
        }
    }

    func pendingOutput<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        outbox.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[written...])) }
    }

    func wrote(_ count: Int) {
        written += count
        if written >= outbox.count { clearOutput() }
    }

    func clearOutput() {
        outbox.removeAll()
        written = 0
    }

    func dispose() {
        // The easy handle lets go of the share first, or the share is "in use" and stays.
        easy.setShare(nil)
        if let share { curl_share_cleanup(share) }
        share = nil
    }

    deinit { dispose() }
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
