import Foundation
import Testing

@testable import MailrouteCore

/// `CurlMultiTransport` against real servers on 127.0.0.1: isolation between pools on one
/// host:port, reuse, the connection limit, scale in threads, silent and slow servers, close,
/// the rate limit.
///
/// The tests hand work to pools and wait for it with blocking waits, as the other suites do,
/// and time completions where the engine thread delivers them: Swift's cooperative pool has
/// two threads here and every suite's waits hold them, so when an `await` returns would say
/// more about the other suites than about the transport.
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

    static func message(_ subject: String) -> [UInt8] {
        Array("From: <sender@acme.test>\r\nTo: <rcpt@example.com>\r\nSubject: \(subject)\r\n\r\nHello from \(subject).\r\n".utf8)
    }

    /// One send, waited for.
    static func send(_ pool: any SMTPPool, _ subject: String, timeout: Double = 30) -> PoolCompletion? {
        let timeline = Timeline()
        timeline.submit([(pool, subject)])
        guard waitUntil(timeout: timeout, { timeline.count == 1 }) else { return nil }
        return timeline.all.first?.completion
    }

    /// Every send handed over at once; their completions by subject, once all are in.
    static func sendAll(_ sends: [(any SMTPPool, String)], timeout: Double = 60) -> [String: PoolCompletion] {
        let timeline = Timeline()
        timeline.submit(sends)
        _ = waitUntil(timeout: timeout) { timeline.count == sends.count }
        return Dictionary(timeline.all.map { ($0.subject, $0.completion) }, uniquingKeysWith: { a, _ in a })
    }

    /// Closes the pools side by side; how long it took, or nil past `timeout`.
    @discardableResult
    static func close(_ pools: [any SMTPPool], timeout: Double = 20) -> Double? {
        let start = Date()
        let multi = pools.map { $0 as! CurlMultiPool }
        for pool in multi { _ = pool.closeAndWait(timeout: 0) }  // starts every close
        for pool in multi {
            guard pool.closeAndWait(timeout: timeout - Date().timeIntervalSince(start)) else { return nil }
        }
        return Date().timeIntervalSince(start)
    }

    static func isSent(_ completion: PoolCompletion?) -> Bool {
        if case .sent = completion { return true }
        return false
    }

    static func isNotStarted(_ completion: PoolCompletion?) -> Bool {
        if case .notStarted = completion { return true }
        return false
    }

    // MARK: - Isolation

    @Test func twoLoginsOnOneHostPortNeverShareAConnection() throws {
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
        let results = Self.sendAll(sends)
        #expect(results.count == 20)
        #expect(results.values.allSatisfy(Self.isSent), "\(results)")
        #expect(waitUntil { server.messages().count == 20 })
        let messages = server.messages()
        #expect(messages.count == 20)
        for message in messages {
            let subject = try #require(message.header("Subject"))
            let expected = subject.hasPrefix("alice") ? "alice" : "bob"
            #expect(message.envelope.login == expected, "\(subject) arrived logged in as \(message.envelope.login ?? "nobody")")
        }
        Self.close([alice, bob])
    }

    @Test func poolsWithTheSameLoginKeepTheirOwnConnections() throws {
        // libcurl already refuses to reuse a connection made with other credentials; what keeps
        // two configurations with the same login apart is that no cache is shared.
        // (Implicit TLS: aiosmtpd reports a STARTTLS upgrade as a second "connect".)
        let server = try SMTPTestServer(.init(implicitTLS: true, auth: ("alice", "alice-secret")))
        let endpoint = Self.endpoint(server.port, security: .tls, user: "alice", password: "alice-secret")
        let first = transport.makePool(name: "first", endpoint: endpoint, limits: Self.limits(max: 1))
        let second = transport.makePool(name: "second", endpoint: endpoint, limits: Self.limits(max: 1))
        var newConnections: [String: Int] = [:]
        for i in 0..<3 {
            for (name, pool) in [("first", first), ("second", second)] {
                let completion = Self.send(pool, "\(name) \(i)")
                guard case .sent(let report) = completion else {
                    Issue.record("\(name) \(i): \(String(describing: completion))")
                    continue
                }
                if report.newConnection { newConnections[name, default: 0] += 1 }
            }
        }
        #expect(newConnections == ["first": 1, "second": 1])
        #expect(server.events().filter { $0 == "connect" }.count == 2, "\(server.events())")
        #expect(server.messages().allSatisfy { $0.envelope.login == "alice" })
        Self.close([first, second])
    }

    @Test func aLargeMessageOverStartTLSArrivesByteForByte() throws {
        let server = try SMTPTestServer(.init(starttls: true, auth: ("alice", "alice-secret")))
        let pool = transport.makePool(
            name: "large", endpoint: Self.endpoint(server.port, security: .starttls, user: "alice", password: "alice-secret"),
            limits: Self.limits(max: 1))
        // 4 MB in 76-byte lines, some starting with a dot: many partial TLS writes, and stuffing.
        var text = "From: <sender@acme.test>\r\nTo: <rcpt@example.com>\r\nSubject: large\r\n\r\n"
        var i = 0
        while text.utf8.count < 4_000_000 {
            text += (i % 7 == 0 ? "." : "") + String(repeating: Character(UnicodeScalar(65 + i % 26)!), count: 74) + "\r\n"
            i += 1
        }
        let bytes = Array(text.utf8)
        let timeline = Timeline()
        (pool as! CurlMultiPool).submit(.send(from: "sender@acme.test", to: ["rcpt@example.com"], data: bytes)) { completion in
            timeline.record("large", completion)
        }
        #expect(waitUntil(timeout: 60) { timeline.count == 1 })
        #expect(Self.isSent(timeline.all.first?.completion), "\(String(describing: timeline.all.first?.completion))")
        let received = try #require(server.messages().first)
        #expect(received.data == Data(bytes), "\(received.data.count) bytes arrived of \(bytes.count)")
        #expect(received.envelope.login == "alice")
        Self.close([pool])
    }

    // MARK: - Reuse and limits

    @Test func sequentialSendsReuseOneConnection() throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "reuse", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 4))
        var newConnections = 0
        for i in 0..<10 {
            let completion = Self.send(pool, "reuse \(i)")
            guard case .sent(let report) = completion else {
                Issue.record("send \(i): \(String(describing: completion))")
                continue
            }
            if report.newConnection { newConnections += 1 }
            #expect(report.reply?.line.hasPrefix("250 2.0.0 Ok: queued as TEST") == true)
        }
        #expect(server.messages().count == 10)
        #expect(server.events().filter { $0 == "connect" }.count == 1, "\(server.events())")
        #expect(newConnections == 1)
        #expect(pool.load == 0)
        Self.close([pool])
    }

    @Test func theMessageCapClosesTheConnection() throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "cap", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1, perConnection: 3))
        for i in 0..<7 { #expect(Self.isSent(Self.send(pool, "cap \(i)"))) }
        // 3 + 3 + 1: the first two connections QUIT after their third message.
        #expect(server.events().filter { $0 == "connect" }.count == 3, "\(server.events())")
        #expect(waitUntil { server.events().filter { $0 == "quit" }.count == 2 })
        Self.close([pool])
        #expect(server.events().filter { $0 == "quit" }.count == 3)
    }

    @Test func noMoreThanMaxConnectionsAtOnce() throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "two", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 2))
        let results = Self.sendAll((0..<10).map { (pool, "limit \($0)") })
        #expect(results.count == 10)
        #expect(results.values.allSatisfy(Self.isSent), "\(results)")
        #expect(server.messages().count == 10)
        let connects = server.events().filter { $0 == "connect" }.count
        #expect(connects >= 1 && connects <= 2, "\(server.events())")
        #expect(server.maxConcurrentConnections() <= 2)
        #expect(pool.load == 0)
        Self.close([pool])
    }

    // MARK: - Scale

    /// 200 pools by default; `MAILROUTE_SCALE_POOLS=1000` measures more.
    @Test func hundredsOfPoolsCostAFewThreads() throws {
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
        let results = Self.sendAll(sends, timeout: 120)
        let elapsed = Date().timeIntervalSince(start)
        let rssAfter = ThreadSampler.residentKiB()
        let peak = sampler.stop()
        let failed = results.filter { !Self.isSent($0.value) }
        #expect(results.count == 2 * count)
        #expect(failed.isEmpty, "\(failed.count) failed, e.g. \(failed.first.map { "\($0)" } ?? "")")
        #expect(waitUntil(timeout: 30) { sink.subjects().count >= 2 * count }, "\(sink.subjects().count) arrived")
        let closing = Self.close(pools, timeout: 60)
        print("""
            CurlMultiTransport scale: \(count) pools, \(2 * count) sends in \(String(format: "%.2f", elapsed)) s; \
            threads \(before) before, peak \(peak.total) (\(peak.ours) mailroute-*); \
            RSS +\((rssAfter - rssBefore) / 1024) MiB with \(2 * count) connections open; \
            closed in \(closing.map { String(format: "%.2f s", $0) } ?? "more than 60 s")
            """)
        // Other suites run meanwhile and start threads of their own: the bound is loose, but
        // far below one thread per pool.
        #expect(peak.total - before <= 12, "threads grew from \(before) to \(peak.total)")
        #expect(peak.ours <= 2, "\(peak.ours) mailroute threads")
        #expect(closing != nil)
    }

    // MARK: - Servers that keep a pool waiting

    @Test func aSilentServerDoesNotDelayAnotherPool() throws {
        let silent = try SMTPTestServer.fault("--silent")
        let healthy = try SMTPTestServer()
        let timeout = 6.0
        let stuck = transport.makePool(
            name: "silent", endpoint: Self.endpoint(silent.port, connectTimeout: timeout, commandTimeout: timeout), limits: Self.limits(max: 2))
        let fine = transport.makePool(name: "healthy", endpoint: Self.endpoint(healthy.port), limits: Self.limits(max: 2))
        let timeline = Timeline()
        timeline.submit((0..<4).map { (stuck, "stuck \($0)") })
        // Its two connections are open and waiting for a greeting before the healthy pool starts.
        #expect(waitUntil(timeout: 5) { silent.events().filter { $0 == "connect" }.count == 2 })
        let healthyStart = Date().timeIntervalSince1970
        timeline.submit((0..<10).map { (fine, "fine \($0)") })
        #expect(waitUntil(timeout: 4 * timeout) { timeline.count == 14 }, "\(timeline.count) of 14 done")
        let stuckDone = timeline.entries("stuck"), fineDone = timeline.entries("fine")
        #expect(fineDone.allSatisfy { Self.isSent($0.completion) }, "\(fineDone)")
        for entry in stuckDone {
            guard case .failed(let error) = entry.completion else {
                Issue.record("\(entry.subject): \(entry.completion)")
                continue
            }
            #expect([.connectTimeout, .connectionFailed, .timeout].contains(error.kind), "\(entry.subject): \(error)")
        }
        // By comparison: every healthy message was done while the silent pool still waited.
        let fineLast = try #require(fineDone.map(\.at).max()), stuckFirst = try #require(stuckDone.map(\.at).min())
        #expect(fineLast < stuckFirst, "healthy done \(fineLast - healthyStart) s in, silent gave up \(stuckFirst - healthyStart) s in")
        #expect(fineLast - healthyStart < timeout / 2)
        Self.close([stuck, fine])
    }

    @Test func aServerSlowToAnswerDataDoesNotDelayAnotherPool() throws {
        // Two seconds to accept each message: libcurl's own SMTP transfer would wait for that
        // reply inside curl_multi_perform, and every pool with it.
        let delay = 2.0
        let slow = try SMTPTestServer.fault("--delay-data", "\(delay)")
        let healthy = try SMTPTestServer()
        let lagging = transport.makePool(name: "slow", endpoint: Self.endpoint(slow.port), limits: Self.limits(max: 2))
        let fine = transport.makePool(name: "healthy", endpoint: Self.endpoint(healthy.port), limits: Self.limits(max: 2))
        let timeline = Timeline()
        let start = Date().timeIntervalSince1970
        timeline.submit((0..<4).map { (lagging, "slow \($0)") })
        #expect(waitUntil(timeout: 5) { slow.events().filter { $0 == "connect" }.count == 2 })
        let healthyStart = Date().timeIntervalSince1970
        timeline.submit((0..<10).map { (fine, "fine \($0)") })
        #expect(waitUntil(timeout: 6 * delay) { timeline.count == 14 }, "\(timeline.count) of 14 done")
        let slowDone = timeline.entries("slow"), fineDone = timeline.entries("fine")
        #expect(timeline.all.allSatisfy { Self.isSent($0.completion) }, "\(timeline.all)")
        // By comparison: the healthy pool was done before the slow server's first answer...
        let fineLast = try #require(fineDone.map(\.at).max()), slowFirst = try #require(slowDone.map(\.at).min())
        #expect(fineLast < slowFirst, "healthy done \(fineLast - healthyStart) s in, the first slow one \(slowFirst - healthyStart) s in")
        // ...and the slow pool's two connections waited side by side: two rounds, not four.
        let slowElapsed = try #require(slowDone.map(\.at).max()) - start
        #expect(slowElapsed >= 2 * delay - 0.5 && slowElapsed < 3.5 * delay, "\(slowElapsed) s for four slow messages")
        Self.close([lagging, fine])
    }

    // MARK: - Close

    @Test func closeQuitsTheConnections() throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "close", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 2))
        let results = Self.sendAll((0..<4).map { (pool, "close \($0)") })
        #expect(results.count == 4 && results.values.allSatisfy(Self.isSent))
        let connects = server.events().filter { $0 == "connect" }.count
        #expect(connects >= 1 && connects <= 2)
        #expect(!server.events().contains("quit"), "idle connections stay open")
        let elapsed = try #require(Self.close([pool], timeout: 10))
        #expect(elapsed < 5)
        // Each QUIT was answered before close returned.
        #expect(server.events().filter { $0 == "quit" }.count == connects, "\(server.events())")
        #expect(Self.isNotStarted(Self.send(pool, "after close")), "a closed pool takes no work")
        #expect(server.messages().count == 4)
    }

    @Test func closeLeavesQueuedWorkNotStartedAndFinishesWorkInHand() throws {
        // Each message takes the server a second to accept.
        let server = try SMTPTestServer.fault("--delay-data", "1")
        // One connection: the second message waits in the queue.
        let pool = transport.makePool(name: "queued", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1))
        let timeline = Timeline()
        timeline.submit([(pool, "in hand"), (pool, "queued")])
        #expect(waitUntil { pool.load == 2 && server.events().contains("connect") })
        let elapsed = Self.close([pool], timeout: 10)
        #expect(waitUntil { timeline.count == 2 })
        let done = Dictionary(timeline.all.map { ($0.subject, $0.completion) }, uniquingKeysWith: { a, _ in a })
        #expect((elapsed ?? 99) < 5, "close took \(String(describing: elapsed)) s")
        #expect(Self.isSent(done["in hand"]), "\(done)")
        #expect(Self.isNotStarted(done["queued"]), "\(done)")
        #expect(server.messages().count == 1)
        #expect(server.events().contains("quit"), "\(server.events())")
        #expect(pool.load == 0)
    }

    /// Work that waited too long behind a slow server comes back not started, before its lease
    /// could run out and a second claim send it again; the send in hand finishes.
    @Test func workWaitingPastItsLimitComesBackNotStarted() throws {
        let server = try SMTPTestServer.fault("--delay-data", "2")
        var limits = Self.limits(max: 1)
        limits.maxQueueWait = 0.5
        let pool = transport.makePool(name: "slow", endpoint: Self.endpoint(server.port), limits: limits)
        let done = Self.sendAll([(pool, "in hand"), (pool, "second"), (pool, "third")], timeout: 20)
        #expect(Self.isSent(done["in hand"]), "\(done)")
        #expect(Self.isNotStarted(done["second"]) && Self.isNotStarted(done["third"]), "\(done)")
        #expect(server.messages().count == 1)
        #expect(pool.load == 0)
        Self.close([pool])
    }

    /// A pipelining server's replies each restart the command timeout: three recipients the
    /// server takes 0.6 s each to accept fit a 1 s timeout (one timeout for the whole pipeline
    /// would not).
    @Test func eachPipelinedReplyRestartsTheCommandTimeout() throws {
        let server = try SMTPTestServer.fault("--pipelining", "--delay-rcpt", "0.6")
        let pool = transport.makePool(name: "patient", endpoint: Self.endpoint(server.port, commandTimeout: 1), limits: Self.limits(max: 1))
        let timeline = Timeline()
        (pool as! CurlMultiPool).submit(.send(from: "sender@acme.test", to: ["a@example.com", "b@example.com", "c@example.com"], data: Self.message("three"))) {
            timeline.record("three", $0)
        }
        #expect(waitUntil(timeout: 20) { timeline.count == 1 })
        #expect(Self.isSent(timeline.all.first?.completion), "\(timeline.all)")
        #expect(try #require(server.messages().first).envelope.rcpt_tos == ["a@example.com", "b@example.com", "c@example.com"])
        #expect(server.events().contains("pipelined"))
        Self.close([pool])
    }

    @Test func closeGivesUpAfterItsTimeout() throws {
        let server = try SMTPTestServer.fault("--delay-data", "3")
        let pool = transport.makePool(name: "slow", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1)) as! CurlMultiPool
        let timeline = Timeline()
        timeline.submit([(pool, "slow")])
        #expect(waitUntil { server.events().contains("connect") })
        let start = Date()
        #expect(!pool.closeAndWait(timeout: 0.5), "not drained yet")
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.4 && elapsed < 2.5, "close returned after \(elapsed) s")
        // The send in hand still finishes, and then the connection QUITs.
        #expect(waitUntil { timeline.count == 1 })
        #expect(Self.isSent(timeline.all.first?.completion))
        #expect(waitUntil { server.events().contains("quit") })
    }

    @Test func anIdlePoolQuitsAndComesBackOnDemand() throws {
        let server = try SMTPTestServer()
        let pool = transport.makePool(name: "idle", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1, idle: 0.5))
        #expect(Self.isSent(Self.send(pool, "before")))
        #expect(waitUntil(timeout: 5) { server.events().contains("quit") }, "the idle connection QUIT")
        #expect(Self.isSent(Self.send(pool, "after")))
        #expect(server.events().filter { $0 == "connect" }.count == 2)
        Self.close([pool])
    }

    @Test func aConnectionCutMidMessageFailsThatMessageOnly() throws {
        // DATA had begun: the message may have arrived, so it is not retried; the next one
        // goes on a fresh connection.
        let server = try SMTPTestServer.fault("--cut-data", "1")
        let pool = transport.makePool(name: "cut", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1))
        guard case .failed(let error) = Self.send(pool, "cut") else {
            Issue.record("the cut message did not fail")
            return
        }
        #expect(error.kind == .connectionLost)
        #expect(error.isTemporary)
        #expect(Self.isSent(Self.send(pool, "next")))
        #expect(server.events().filter { $0 == "connect" }.count == 2)
        Self.close([pool])
    }

    @Test func aConnectionTheServerDropsIsNotReused() throws {
        let server = try SMTPTestServer.fault("--drop-after", "1")
        let pool = transport.makePool(name: "drop", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1))
        #expect(Self.isSent(Self.send(pool, "first")))
        #expect(waitUntil { server.events().contains("disconnect") })
        // Seen while idle: the next message connects afresh instead of failing.
        guard case .sent(let report) = Self.send(pool, "second") else {
            Issue.record("the second message failed")
            return
        }
        #expect(report.newConnection)
        #expect(server.events().filter { $0 == "connect" }.count == 2)
        Self.close([pool])
    }

    @Test func aSendRacingTheServersCloseIsRetriedOnAFreshConnection() throws {
        // The second message starts as the server hangs up after the first: either the engine
        // sees the close first, or MAIL fails on the reused connection before DATA and the
        // send is retried once, fresh. Both end with both messages sent.
        for round in 0..<3 {
            let server = try SMTPTestServer.fault("--drop-after", "1")
            let pool = transport.makePool(name: "race", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 1))
            let results = Self.sendAll([(pool, "one"), (pool, "two")])
            #expect(results.count == 2 && results.values.allSatisfy(Self.isSent), "round \(round): \(results)")
            #expect(server.messages().count == 2)
            Self.close([pool])
        }
    }

    // MARK: - Rate

    @Test func aRateLimitSpacesSendsWithoutBlockingOtherPools() throws {
        let server = try SMTPTestServer()
        // 120 a minute: one every half second.
        let limited = transport.makePool(name: "limited", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 4, rate: 120))
        let free = transport.makePool(name: "free", endpoint: Self.endpoint(server.port), limits: Self.limits(max: 4))
        let timeline = Timeline()
        timeline.submit((0..<4).map { (limited, "limited \($0)") })
        #expect(waitUntil { server.messages().count >= 1 })
        timeline.submit((0..<10).map { (free, "free \($0)") })
        #expect(waitUntil(timeout: 10) { timeline.count == 14 })
        #expect(timeline.all.allSatisfy { Self.isSent($0.completion) })
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
        Self.close([limited, free])
    }
}

/// Completions as the engine thread delivers them, with the wall-clock time they came.
final class Timeline: @unchecked Sendable {
    struct Entry {
        var subject: String
        var completion: PoolCompletion
        var at: Double
    }

    private let lock = NSLock()
    private var entries: [Entry] = []

    /// Hands each send to its pool at once, from this thread.
    func submit(_ sends: [(any SMTPPool, String)]) {
        for (pool, subject) in sends {
            let work = PoolWork.send(from: "sender@acme.test", to: ["rcpt@example.com"], data: CurlMultiTransportTests.message(subject))
            (pool as! CurlMultiPool).submit(work) { [self] completion in record(subject, completion) }
        }
    }

    func record(_ subject: String, _ completion: PoolCompletion) {
        let entry = Entry(subject: subject, completion: completion, at: Date().timeIntervalSince1970)
        lock.withLock { entries.append(entry) }
    }

    var count: Int { lock.withLock { entries.count } }
    var all: [Entry] { lock.withLock { entries } }
    func entries(_ prefix: String) -> [Entry] { all.filter { $0.subject.hasPrefix(prefix) } }
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
