import Foundation

/// At most `maxConnections` SMTP connections to one endpoint, each owned by a dedicated
/// thread so that blocking libcurl calls never touch Swift's cooperative pool.
/// (One thread per connection: `ThreadedTransport`.)
///
/// Connections stay open between messages and close after `idleTimeout` without work or
/// after `maxMessagesPerConnection` messages. A pool whose endpoint changed is `close`d and
/// replaced; its workers finish the message in hand, QUIT and exit.
public final class ConnectionPool: SMTPPool, @unchecked Sendable {
    public typealias Limits = PoolLimits
    public typealias Work = PoolWork
    public typealias Completion = PoolCompletion

    private struct Job {
        var work: Work
        var done: @Sendable (Completion) -> Void
    }

    public let name: String
    public let endpoint: SMTPEndpoint
    public let limits: Limits
    private let condition = NSCondition()
    private var queue: [Job] = []
    private var workers = 0
    private var idleWorkers = 0
    private var busy = 0
    private var closed = false
    private var nextSendAt = Date.distantPast

    public init(name: String, endpoint: SMTPEndpoint, limits: Limits) {
        self.name = name
        self.endpoint = endpoint
        self.limits = limits
    }

    /// Work waiting or in hand; the dispatcher claims no more than the pool can take.
    public var load: Int {
        condition.withLock { queue.count + busy }
    }

    public var connectionCount: Int {
        condition.withLock { workers }
    }

    /// Runs `work` on one of the pool's connections and returns its completion.
    public func perform(_ work: Work) async -> Completion {
        await withCheckedContinuation { continuation in
            submit(work) { continuation.resume(returning: $0) }
        }
    }

    public func submit(_ work: Work, done: @escaping @Sendable (Completion) -> Void) {
        condition.lock()
        guard !closed else {
            condition.unlock()
            done(.notStarted)
            return
        }
        queue.append(Job(work: work, done: done))
        let spawn = idleWorkers == 0 && workers < limits.maxConnections
        if spawn { workers += 1 }
        condition.signal()
        condition.unlock()
        if spawn {
            let thread = Thread { [self] in workerLoop() }
            thread.name = "mailroute-pool \(name)"
            thread.start()
        }
    }

    /// Stops taking work. Queued work completes as `.notStarted`; work in hand finishes,
    /// then each connection QUITs. Returns once every worker has exited, or after `timeout`.
    public func close(timeout: Double = 30) async {
        let abandoned: [Job] = condition.withLock {
            closed = true
            let jobs = queue
            queue.removeAll()
            condition.broadcast()
            return jobs
        }
        for job in abandoned { job.done(.notStarted) }
        let deadline = Date().addingTimeInterval(timeout)
        while condition.withLock({ workers }) > 0 && Date() < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    private func workerLoop() {
        var connection: SMTPConnection?
        var sentOnConnection = 0
        while let job = nextJob() {
            if connection == nil || sentOnConnection >= limits.maxMessagesPerConnection {
                connection = SMTPConnection(endpoint: endpoint)
                sentOnConnection = 0
            }
            let completion: Completion
            switch job.work {
            case .send(let from, let to, let data):
                waitForRateLimit()
                switch connection!.send(from: from, to: to, data: data) {
                case .success(let report): completion = .sent(report)
                case .failure(let error):
                    completion = .failed(error)
                    // Start the next message on a clean connection rather than guess at this one's state.
                    connection = nil
                }
                sentOnConnection += 1
            case .verify:
                // A probe uses a connection of its own: verify leaves it QUIT.
                switch SMTPConnection(endpoint: endpoint).verify() {
                case .success: completion = .verified
                case .failure(let error): completion = .failed(error)
                }
            }
            condition.withLock { busy -= 1 }
            job.done(completion)
        }
        // Dropping the connection QUITs it.
        connection = nil
    }

    /// The next job, or nil when the worker should exit (pool closed, or idle too long).
    private func nextJob() -> Job? {
        condition.lock()
        defer { condition.unlock() }
        while queue.isEmpty {
            if closed {
                workers -= 1
                return nil
            }
            idleWorkers += 1
            let woke = condition.wait(until: Date().addingTimeInterval(limits.idleTimeout))
            idleWorkers -= 1
            if !woke && queue.isEmpty {
                workers -= 1
                return nil
            }
        }
        busy += 1
        return queue.removeFirst()
    }

    private func waitForRateLimit() {
        guard let rate = limits.ratePerMinute, rate > 0 else { return }
        let interval = 60.0 / Double(rate)
        let start: Date = condition.withLock {
            let start = max(Date(), nextSendAt)
            nextSendAt = start.addingTimeInterval(interval)
            return start
        }
        let wait = start.timeIntervalSinceNow
        if wait > 0 { Thread.sleep(forTimeInterval: wait) }
    }
}

/// One OS thread per connection, blocking libcurl easy calls.
public struct ThreadedTransport: SMTPTransport {
    public init() {}

    public func makePool(name: String, endpoint: SMTPEndpoint, limits: PoolLimits) -> any SMTPPool {
        ConnectionPool(name: name, endpoint: endpoint, limits: limits)
    }
}
