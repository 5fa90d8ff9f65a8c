import Foundation

/// Every pool's connections driven by libcurl's multi interface from one dedicated OS thread
/// (`CurlMultiEngine`), so a thousand configurations with live connections cost a couple of
/// threads, not a thousand. Blocking work stays off Swift's cooperative pool and off that
/// thread: libcurl connects, secures and logs in without blocking; each message and each QUIT
/// is a conversation the engine polls; probes (`.verify`) run on a short-lived thread.
///
/// No pool's connection is ever in a cache another pool (or another slot) looks in, so a
/// connection authenticated as one configuration never carries another configuration's mail.
public struct CurlMultiTransport: SMTPTransport {
    let engine: CurlMultiEngine

    /// Pools of every `CurlMultiTransport` in the process share one engine thread.
    public init() {
        engine = .shared
    }

    public func makePool(name: String, endpoint: SMTPEndpoint, limits: PoolLimits) -> any SMTPPool {
        CurlMultiPool(name: name, endpoint: endpoint, limits: limits, engine: engine)
    }
}

/// At most `limits.maxConnections` transfers ("slots") in flight on the engine thread; further
/// work waits in the pool's FIFO queue.
public final class CurlMultiPool: SMTPPool {
    public let name: String
    public let endpoint: SMTPEndpoint
    public let limits: PoolLimits
    let id: Int
    let shared: PoolShared
    private let engine: CurlMultiEngine

    init(name: String, endpoint: SMTPEndpoint, limits: PoolLimits, engine: CurlMultiEngine) {
        self.name = name
        self.endpoint = endpoint
        self.limits = limits
        self.engine = engine
        shared = PoolShared()
        id = engine.register(name: name, endpoint: endpoint, limits: limits, shared: shared)
    }

    deinit {
        // Nothing can be queued (every `perform` holds the pool); idle connections QUIT now.
        engine.submit(.release(pool: id))
    }

    public var load: Int { shared.load }

    public var secondsPerMessage: Double? { shared.secondsPerMessage }

    public var connections: PoolConnections { shared.connections }

    public func perform(_ work: PoolWork) async -> PoolCompletion {
        await withCheckedContinuation { continuation in
            submit(work) { continuation.resume(returning: $0) }
        }
    }

    /// `perform` without Swift concurrency: `done` runs once, on the engine thread or the
    /// probe's (tests time completions there, where no busy cooperative pool delays them).
    func submit(_ work: PoolWork, done: @escaping @Sendable (PoolCompletion) -> Void) {
        switch work {
        case .send(let from, let to, let data):
            let shared = self.shared
            guard shared.admit() else {
                done(.notStarted)
                return
            }
            engine.submit(.send(pool: id, CurlMultiEngine.Job(from: from, to: to, data: data) { completion in
                shared.finish()
                done(completion)
            }))
        case .verify:
            verify(done: done)
        }
    }

    /// One send for a caller on a thread of its own, which may block (`mailroutectl config
    /// test`): the daemon's own path to the server.
    func sendAndWait(from sender: String, to recipients: [String], data: [UInt8]) -> PoolCompletion {
        let done = DispatchSemaphore(value: 0)
        let result = Locked<PoolCompletion>(.notStarted)
        submit(.send(from: sender, to: recipients, data: data)) { completion in
            result.withLock { $0 = completion }
            done.signal()
        }
        done.wait()
        return result.withLock { $0 }
    }

    /// A probe on a connection of its own, on a short-lived thread: probes are rare, and a
    /// blocking `SMTPConnection` keeps `verify`'s one implementation.
    private func verify(done: @escaping @Sendable (PoolCompletion) -> Void) {
        let shared = self.shared
        let endpoint = self.endpoint
        guard shared.admit(verify: true) else {
            done(.notStarted)
            return
        }
        let thread = Thread {
            nameThisThread("mailroute-probe")
            let completion: PoolCompletion
            switch SMTPConnection(endpoint: endpoint).verify() {
            case .success: completion = .verified
            case .failure(let error): completion = .failed(error)
            }
            shared.finish(verify: true)
            done(completion)
        }
        thread.name = "mailroute-probe"
        thread.start()
    }

    public func close(timeout: Double) async {
        beginClosing()
        await shared.waitUntilDrained(timeout: timeout)
    }

    /// `close` for a caller on a thread of its own, which may block: true when the pool was
    /// drained within `timeout` (tests time closing this way, free of the cooperative pool).
    func closeAndWait(timeout: Double) -> Bool {
        beginClosing()
        let drained = DispatchSemaphore(value: 0)
        shared.whenDrained { drained.signal() }
        return drained.wait(timeout: .now() + max(0, timeout)) == .success
    }

    private func beginClosing() {
        if shared.markClosed() { engine.submit(.close(pool: id)) }
    }
}

/// What a pool's callers and the engine thread both touch, under one lock.
final class PoolShared: @unchecked Sendable {
    private let lock = NSLock()
    private var _load = 0
    private var verifying = 0
    private var closed = false
    /// The engine has finished the pool's sends and closed its connections.
    private var engineDone = false
    private var waiters: [Int: @Sendable () -> Void] = [:]
    private var cancelled: Set<Int> = []
    private var nextWaiter = 0
    private var pace: Double?
    private var _connections = PoolConnections()

    var load: Int { lock.withLock { _load } }

    /// As the engine last published them: its slots are its thread's alone.
    var connections: PoolConnections {
        get { lock.withLock { _connections } }
        set { lock.withLock { _connections = newValue } }
    }

    var secondsPerMessage: Double? { lock.withLock { pace } }

    /// A try that took `seconds` on one connection, sent or not (the engine's clock, from its
    /// start on a connection to its end): a moving average that follows a change in a few
    /// dozen, and jumps at once when a server starts timing out.
    func noteTry(seconds: Double) {
        lock.withLock { pace = pace.map { $0 * 0.9 + seconds * 0.1 } ?? seconds }
    }

    /// Counts one more piece of work in, unless the pool is closed.
    func admit(verify: Bool = false) -> Bool {
        lock.withLock {
            guard !closed else { return false }
            _load += 1
            if verify { verifying += 1 }
            return true
        }
    }

    func finish(verify: Bool = false) {
        let ready = lock.withLock { () -> [@Sendable () -> Void] in
            _load -= 1
            if verify { verifying -= 1 }
            return takeWaitersIfDrained()
        }
        for waiter in ready { waiter() }
    }

    /// True the first time.
    func markClosed() -> Bool {
        lock.withLock {
            defer { closed = true }
            return !closed
        }
    }

    /// Called once by the engine when the pool's connections are closed.
    func markEngineDone() {
        let ready = lock.withLock { () -> [@Sendable () -> Void] in
            engineDone = true
            return takeWaitersIfDrained()
        }
        for waiter in ready { waiter() }
    }

    private var drained: Bool { engineDone && verifying == 0 }

    private func takeWaitersIfDrained() -> [@Sendable () -> Void] {
        guard drained, !waiters.isEmpty else { return [] }
        defer { waiters.removeAll() }
        return Array(waiters.values)
    }

    /// Calls `callback` once the pool is drained (at once if it is).
    func whenDrained(_ callback: @escaping @Sendable () -> Void) {
        register(callback)
    }

    /// Keeps `callback` for when the pool is drained, or calls it now: drained already, or the
    /// wait `id` was cancelled before it got here.
    private func register(_ callback: @escaping @Sendable () -> Void, id: Int? = nil) {
        let now = lock.withLock { () -> Bool in
            if drained { return true }
            let id = id ?? nextID()
            if cancelled.remove(id) != nil { return true }
            waiters[id] = callback
            return false
        }
        if now { callback() }
    }

    private func nextID() -> Int {
        nextWaiter += 1
        return nextWaiter
    }

    /// Returns when the pool is drained, or after `timeout` seconds.
    func waitUntilDrained(timeout: Double) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitUntilDrained() }
            group.addTask { try? await Task.sleep(for: .seconds(max(0, timeout))) }
            _ = await group.next()
            group.cancelAll()
        }
    }

    private func waitUntilDrained() async {
        let id = lock.withLock { nextID() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                register({ continuation.resume() }, id: id)
            }
        } onCancel: {
            let waiter = lock.withLock { () -> (@Sendable () -> Void)? in
                if let waiter = waiters.removeValue(forKey: id) { return waiter }
                // Not registered yet: tell the registration. (Once drained it resumes anyway.)
                if !drained { cancelled.insert(id) }
                return nil
            }
            waiter?()
        }
    }
}
