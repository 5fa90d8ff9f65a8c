import Foundation
import Testing

@testable import MailrouteCore

/// `CurlMultiTransport` against real servers on 127.0.0.1: isolation between pools on one
/// host:port, reuse, the connection limit, scale in threads, a silent server, close, rate.
///
/// Timings come from the servers' own clocks where they can: the tests' tasks share Swift's
/// two cooperative threads with every other suite, so when an await returns says little.
@Suite struct CurlMultiTransportTests {
    let transport = CurlMultiTransport()

    static func endpoint(
        _ port: Int, security: SMTPSecurity = .none, user: String? = nil, password: String? = nil,
        connectTimeout: Double = 10, commandTimeout: Double = 10
    ) -> SMTPEndpoint {
        SMTPEndpoint(
            host: "127.0.0.1", port: port, security: security, username: user, password: password,
            caFile: security == .none ? nil : TestCA.shared.caFile, heloName: "mailroute.test",
            connectTimeoutSeconds: connectTimeout, commandTimeoutSeconds: commandTimeout, maxIdleSeconds: 60)
    }

    static func limits(max: Int = 4, perConnection: Int = 100, idle: Double = 60, rate: Int? = nil) -> PoolLimits {
        PoolLimits(maxConnections: max, maxMessagesPerConnection: perConnection, idleTimeout: idle, ratePerMinute: rate)
    }

    static func message(_ subject: String, from: String) -> [UInt8] {
        Array("From: <\(from)>\r\nTo: <rcpt@example.com>\r\nSubject: \(subject)\r\n\r\nHello from \(subject).\r\n".utf8)
    }

    static func send(_ pool: any SMTPPool, _ subject: String, from: String = "sender@acme.test") async -> PoolCompletion {
        await pool.perform(.send(from: from, to: ["rcpt@example.com"], data: message(subject, from: from)))
    }

    /// Sends each (pool, subject) at once and returns the completions by subject.
    static func sendAll(_ sends: [(any SMTPPool, String)]) async -> [String: PoolCompletion] {
        await withTaskGroup(of: (String, PoolCompletion).self) { group in
            for (pool, subject) in sends {
                group.addTask { (subject, await send(pool, subject)) }
            }
            var results: [String: PoolCompletion] = [:]
            for await (subject, completion) in group { results[subject] = completion }
            return results
        }
    }

    static func closeAll(_ pools: [any SMTPPool], timeout: Double = 20) async {
        await withTaskGroup(of: Void.self) { group in
            for pool in pools { group.addTask { await pool.close(timeout: timeout) } }
        }
    }

    static func isSent(_ completion: PoolCompletion?) -> Bool {
        if case .sent = completion { return true }
        return false
    }

    // MARK: - Isolation

    @Test func twoLoginsOnOneHostPortNeverShareAConnection() async throws {
        var options = SMTPTestServer.Options()
        options.starttls = true
        options.auth = ("alice", "alice-secret")
        options.moreLogins = [("bob", "bob-secret")]
        let server = try SMTPTestServer(options)
        let alice = transport.makePool(
            name: "alice", endpoint: Self.endpoint(server.port, security: .starttls, user: "alice", password: "alice-secret"),
            limits: Self.limits(max: 2))
        let bob = transport.makePool(
            name: "bob", endpoint: Self.endpoint(server.port, security: .starttls, user: "bob", password: "bob-secret"),
            limits: Self.limits(max: 2))
        let sends: [(any SMTPPool, String)] = (0..<20).map { i in i % 2 == 0 ? (alice, "alice \(i)") : (bob, "bob \(i)") }
        let results = await Self.sendAll(sends)
        #expect(results.values.allSatisfy(Self.isSent), "\(results)")
        #expect(await eventually { server.messages().count == 20 })
        let messages = server.messages()
        #expect(messages.count == 20)
        for message in messages {
            let subject = try #require(message.header("Subject"))
            let expected = subject.hasPrefix("alice") ? "alice" : "bob"
            #expect(message.envelope.login == expected, "\(subject) arrived logged in as \(message.envelope.login ?? "nobody")")
        }
        await Self.closeAll([alice, bob])
    }

    @Test func poolsWithTheSameLoginKeepTheirOwnConnections() async throws {
        // libcurl already refuses to reuse a connection made with other credentials; the
        // per-pool share is what keeps two configurations with the same login apart.
        // (Implicit TLS: aiosmtpd reports a STARTTLS upgrade as a second "connect".)
        let server = try SMTPTestServer(.init(implicitTLS: true, auth: ("alice", "alice-secret")))
        let endpoint = Self.endpoint(server.port, security: .tls, user: "alice", password: "alice-secret")
        let first = transport.makePool(name: "first", endpoint: endpoint, limits: Self.limits(max: 1))
        let second = transport.makePool(name: "second", endpoint: endpoint, limits: Self.limits(max: 1))
        var newConnections: [String: Int] = [:]
        for i in 0..<3 {
            for (name, pool) in [("first", first), ("second", second)] {
                let completion = await Self.send(pool, "\(name) \(i)")
                guard case .sent(let report) = completion else {
                    Issue.record("\(name) \(i): \(completion)")
                    continue
                }
                if report.newConnection { newConnections[name, default: 0] += 1 }
            }
        }
        #expect(newConnections == ["first": 1, "second": 1])
        #expect(server.events().filter { $0 == "connect" }.count == 2, "\(server.events())")
        #expect(server.messages().allSatisfy { $0.envelope.login == "alice" })
        await Self.closeAll([first, second])
    }

    // MARK: - Reuse and limits

    @Test func sequentialSendsReuseOneConnection() async throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "reuse", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 4))
        var newConnections = 0
        for i in 0..<10 {
            let completion = await Self.send(pool, "reuse \(i)")
            guard case .sent(let report) = completion else {
                Issue.record("send \(i): \(completion)")
                continue
            }
            if report.newConnection { newConnections += 1 }
        }
        #expect(server.messages().count == 10)
        #expect(server.events().filter { $0 == "connect" }.count == 1, "\(server.events())")
        #expect(newConnections == 1)
        #expect(pool.load == 0)
        await pool.close(timeout: 10)
    }

    @Test func theMessageCapClosesTheConnection() async throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "cap", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1, perConnection: 3))
        for i in 0..<7 { #expect(Self.isSent(await Self.send(pool, "cap \(i)"))) }
        // 3 + 3 + 1: the first two connections QUIT at their third message.
        #expect(server.events().filter { $0 == "connect" }.count == 3, "\(server.events())")
        #expect(await eventually { server.events().filter { $0 == "quit" }.count == 2 })
        await pool.close(timeout: 10)
        #expect(await eventually { server.events().filter { $0 == "quit" }.count == 3 })
    }

    @Test func noMoreThanMaxConnectionsAtOnce() async throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "two", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 2))
        let results = await Self.sendAll((0..<10).map { (pool, "limit \($0)") })
        #expect(results.count == 10)
        #expect(results.values.allSatisfy(Self.isSent), "\(results)")
        #expect(server.messages().count == 10)
        let connects = server.events().filter { $0 == "connect" }.count
        #expect(connects >= 1 && connects <= 2, "\(server.events())")
        #expect(server.maxConcurrentConnections() <= 2)
        #expect(pool.load == 0)
        await pool.close(timeout: 10)
    }

    // MARK: - Scale

    /// 200 pools by default; `MAILROUTE_SCALE_POOLS=1000` measures more.
    @Test func hundredsOfPoolsCostAFewThreads() async throws {
        let count = Int(ProcessInfo.processInfo.environment["MAILROUTE_SCALE_POOLS"] ?? "") ?? 200
        let sink = try SinkServer(backlog: 4096, sessions: 4 * count + 64)
        _ = CurlMultiEngine.shared  // the engine thread is part of the baseline
        let sampler = ThreadSampler()
        let before = ThreadSampler.count()
        let rssBefore = ThreadSampler.residentKiB()
        let pools = (0..<count).map {
            transport.makePool(name: "scale \($0)", endpoint: Self.endpoint(sink.port, connectTimeout: 20, commandTimeout: 20), limits: Self.limits(max: 2))
        }
        let sends = pools.enumerated().flatMap { i, pool in [(pool, "scale \(i) a"), (pool, "scale \(i) b")] }
        let start = Date()
        let results = await Self.sendAll(sends)
        let elapsed = Date().timeIntervalSince(start)
        let rssAfter = ThreadSampler.residentKiB()
        let peak = sampler.stop()
        let failed = results.filter { !Self.isSent($0.value) }
        #expect(results.count == 2 * count)
        #expect(failed.isEmpty, "\(failed.count) failed, e.g. \(failed.first.map { "\($0)" } ?? "")")
        #expect(await eventually(timeout: 30) { sink.subjects().count >= 2 * count }, "\(sink.subjects().count) arrived")
        print("""
            CurlMultiTransport scale: \(count) pools, \(2 * count) sends in \(String(format: "%.2f", elapsed)) s; \
            threads \(before) before, peak \(peak.total) (\(peak.ours) mailroute-*); \
            RSS +\((rssAfter - rssBefore) / 1024) MiB
            """)
        // Other suites run meanwhile and start threads of their own: the bound is loose, but
        // far below one thread per pool.
        #expect(peak.total - before <= 12, "threads grew from \(before) to \(peak.total)")
        #expect(peak.ours <= 4, "\(peak.ours) mailroute threads")
        let closeStart = Date()
        await Self.closeAll(pools)
        #expect(Date().timeIntervalSince(closeStart) < 20)
    }

    // MARK: - A silent server

    @Test func aSilentServerDoesNotDelayAnotherPool() async throws {
        let silent = try SMTPTestServer.fault("--silent")
        let healthy = try SMTPTestServer()
        let timeout = 6.0
        let stuck = transport.makePool(
            name: "silent", endpoint: Self.endpoint(silent.port, connectTimeout: timeout, commandTimeout: timeout), limits: Self.limits(max: 2))
        let fine = transport.makePool(name: "healthy", endpoint: Self.endpoint(healthy.port), limits: Self.limits(max: 2))
        let start = Date().timeIntervalSince1970
        async let stuckResults = Self.sendAll((0..<4).map { (stuck, "stuck \($0)") })
        // The silent pool's connections are open and waiting before the healthy pool starts.
        #expect(await eventually(timeout: 5) { silent.events().filter { $0 == "connect" }.count == 2 })
        let healthyResults = await Self.sendAll((0..<10).map { (fine, "fine \($0)") })
        #expect(healthyResults.values.allSatisfy(Self.isSent), "\(healthyResults)")
        let lastArrival = try #require(healthy.messages().compactMap(\.envelope.at).max())
        let stuckDone = await stuckResults
        let stuckElapsed = Date().timeIntervalSince1970 - start
        for (subject, completion) in stuckDone {
            guard case .failed(let error) = completion else {
                Issue.record("\(subject): \(completion)")
                continue
            }
            #expect([.connectionFailed, .timeout].contains(error.kind), "\(subject): \(error)")
        }
        // By comparison: the silent pool waited out its timeouts; the healthy one did not wait for them.
        #expect(stuckElapsed >= timeout - 0.5)
        #expect(lastArrival - start < timeout / 2, "healthy mail arrived \(lastArrival - start) s after the start")
        await Self.closeAll([stuck, fine])
    }

    @Test func aServerSlowToAnswerDataDoesNotDelayAnotherPool() async throws {
        // Two seconds to accept each message: libcurl's own SMTP transfer would wait for that
        // reply inside curl_multi_perform, and every pool with it.
        let delay = 2.0
        let slow = try SMTPTestServer.fault("--delay-data", "\(delay)")
        let healthy = try SMTPTestServer()
        let lagging = transport.makePool(name: "slow", endpoint: Self.endpoint(slow.port), limits: Self.limits(max: 2))
        let fine = transport.makePool(name: "healthy", endpoint: Self.endpoint(healthy.port), limits: Self.limits(max: 2))
        let start = Date().timeIntervalSince1970
        async let slowResults = Self.sendAll((0..<4).map { (lagging, "slow \($0)") })
        #expect(await eventually(timeout: 5) { slow.events().filter { $0 == "connect" }.count == 2 })
        let healthyResults = await Self.sendAll((0..<10).map { (fine, "fine \($0)") })
        #expect(healthyResults.values.allSatisfy(Self.isSent), "\(healthyResults)")
        let lastArrival = try #require(healthy.messages().compactMap(\.envelope.at).max())
        let slowDone = await slowResults
        let slowElapsed = Date().timeIntervalSince1970 - start
        #expect(slowDone.values.allSatisfy(Self.isSent), "\(slowDone)")
        // By comparison: the healthy pool was done before the slow server's first answer...
        #expect(lastArrival - start < delay, "healthy mail arrived \(lastArrival - start) s after the start")
        // ...and the slow pool's two connections waited side by side: two rounds, not four.
        #expect(slowElapsed >= 2 * delay - 0.5 && slowElapsed < 3.5 * delay, "\(slowElapsed) s for four slow messages")
        await Self.closeAll([lagging, fine])
    }

    // MARK: - Close

    @Test func closeQuitsTheConnections() async throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "close", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 2))
        let results = await Self.sendAll((0..<4).map { (pool, "close \($0)") })
        #expect(results.values.allSatisfy(Self.isSent))
        let connects = server.events().filter { $0 == "connect" }.count
        #expect(connects >= 1 && connects <= 2)
        #expect(!server.events().contains("quit"), "idle connections stay open")
        let start = Date()
        await pool.close(timeout: 10)
        #expect(Date().timeIntervalSince(start) < 5)
        #expect(server.events().filter { $0 == "quit" }.count == connects, "\(server.events())")
        guard case .notStarted = await Self.send(pool, "after close") else {
            Issue.record("a closed pool took work")
            return
        }
        #expect(server.messages().count == 4)
    }

    @Test func closeLeavesQueuedWorkNotStartedAndFinishesWorkInHand() async throws {
        // Each message takes the server a second to accept.
        let server = try SMTPTestServer.fault("--delay-data", "1")
        // One connection: the second message waits in the queue.
        let pool = transport.makePool(name: "queued", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1))
        async let results = Self.sendAll([(pool, "in hand"), (pool, "queued")])
        #expect(await eventually { pool.load == 2 && server.events().contains("connect") })
        let start = Date()
        await pool.close(timeout: 10)
        let elapsed = Date().timeIntervalSince(start)
        let done = await results
        #expect(elapsed < 5, "close took \(elapsed) s")
        let inHand = try #require(done.first { Self.isSent($0.value) }, "\(done)")
        let other = done.first { $0.key != inHand.key }?.value
        guard case .notStarted = other else {
            Issue.record("the queued message: \(String(describing: other))")
            return
        }
        #expect(server.messages().count == 1)
        #expect(server.events().contains("quit"), "\(server.events())")
        #expect(pool.load == 0)
    }

    @Test func closeGivesUpAfterItsTimeout() async throws {
        let server = try SMTPTestServer.fault("--delay-data", "3")
        let pool = transport.makePool(name: "slow", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1))
        async let result = Self.send(pool, "slow")
        #expect(await eventually { server.events().contains("connect") })
        let start = Date()
        await pool.close(timeout: 0.5)
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.4 && elapsed < 2.5, "close returned after \(elapsed) s")
        // The send in hand still finishes.
        #expect(Self.isSent(await result))
    }

    @Test func anIdlePoolQuitsAndComesBackOnDemand() async throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "idle", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1, idle: 0.5))
        #expect(Self.isSent(await Self.send(pool, "before")))
        #expect(await eventually(timeout: 5) { server.events().contains("quit") }, "the idle connection QUIT")
        #expect(Self.isSent(await Self.send(pool, "after")))
        #expect(server.events().filter { $0 == "connect" }.count == 2)
        await pool.close(timeout: 10)
    }

    // MARK: - Rate

    @Test func aRateLimitSpacesSendsWithoutBlockingOtherPools() async throws {
        let server = try SMTPTestServer()
        // 120 a minute: one every half second.
        let limited = transport.makePool(name: "limited", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 4, rate: 120))
        let free = transport.makePool(name: "free", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 4))
        async let limitedResults = Self.sendAll((0..<4).map { (limited, "limited \($0)") })
        #expect(await eventually { server.messages().count >= 1 })
        let freeResults = await Self.sendAll((0..<10).map { (free, "free \($0)") })
        #expect(freeResults.values.allSatisfy(Self.isSent))
        #expect(await limitedResults.values.allSatisfy(Self.isSent))
        let messages = server.messages()
        func arrivals(_ prefix: String) -> [Double] {
            messages.filter { $0.header("Subject")?.hasPrefix(prefix) == true }.compactMap(\.envelope.at).sorted()
        }
        let limitedTimes = arrivals("limited"), freeTimes = arrivals("free")
        try #require(limitedTimes.count == 4 && freeTimes.count == 10)
        // Arrival times add each send's own latency (a first one also connects): the span
        // of four sends half a second apart is ~1.5 s, each gap well over a quarter.
        for (a, b) in zip(limitedTimes, limitedTimes.dropFirst()) {
            #expect(b - a >= 0.25, "limited sends \(b - a) s apart")
        }
        #expect(limitedTimes.last! - limitedTimes.first! >= 1.2, "\(limitedTimes)")
        // The free pool's ten went out together, not on the limited pool's schedule.
        #expect(freeTimes.last! - freeTimes.first! < 0.4, "free sends spread over \(freeTimes.last! - freeTimes.first!) s")
        #expect(freeTimes.last! < limitedTimes.last!)
        await Self.closeAll([limited, free])
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes, without holding a
/// cooperative thread meanwhile.
func eventually(timeout: TimeInterval = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// Counts this process's threads (/proc/self/task) on a thread of its own until stopped.
final class ThreadSampler: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private var peak = (total: 0, ours: 0)
    private let finished = DispatchSemaphore(value: 0)

    init() {
        let started = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            started.signal()
            while lock.withLock({ running }) {
                let total = Self.count(), ours = Self.count(prefix: "mailroute-")
                lock.withLock { peak = (max(peak.total, total), max(peak.ours, ours)) }
                usleep(5_000)
            }
            finished.signal()
        }
        thread.start()
        // Count from when the sampler's own thread exists.
        started.wait()
    }

    func stop() -> (total: Int, ours: Int) {
        lock.withLock { running = false }
        finished.wait()
        return lock.withLock { peak }
    }

    static func count(prefix: String? = nil) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        guard let prefix else { return tasks.count }
        return tasks.filter { task in
            let comm = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
            return comm.hasPrefix(prefix)
        }.count
    }

    static func residentKiB() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }
}
