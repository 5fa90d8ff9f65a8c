import Foundation
import Testing

@testable import MailrouteCore

/// A NOTIFY_SOCKET listener, as systemd would hold, receiving what `mailrouted` says.
final class NotifyListener: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var received: [String] = []
    private var thread: Thread?
    private var running = true

    init() throws {
        path = Paths.temporaryDirectory("notify").appendingPathComponent("n.sock").path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in path.utf8.enumerated() { buf[i] = b }
        }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else { throw DaemonError.didNotStart("cannot bind \(path)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while lock.withLock({ running }) {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 { lock.withLock { received.append(String(decoding: buffer[..<n], as: UTF8.self)) } }
            }
        }
        self.thread = thread
        thread.start()
    }

    deinit {
        lock.withLock { running = false }
        usleep(200_000)
        close(fd)
    }

    var messages: [String] { lock.withLock { received } }
}

@Suite struct NotifyTests {
    @Test func readyStatusWatchdogAndStopping() throws {
        let listener = try NotifyListener()
        let env = try CtlEnvironment()
        let daemon = DaemonProcess(env: env)
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"])
        #expect(waitUntil(timeout: 10) { listener.messages.contains { $0.contains("READY=1") } })
        let pingsBefore = listener.messages.filter { $0 == "WATCHDOG=1" }.count
        usleep(2_000_000)
        let pings = listener.messages.filter { $0 == "WATCHDOG=1" }.count - pingsBefore
        // Every 0.2 s (half of WATCHDOG_USEC) over 2 s: about 10.
        #expect(pings >= 6 && pings <= 14, "\(pings) pings in 2 s")
        #expect(waitUntil(timeout: 10) { listener.messages.contains { $0.hasPrefix("STATUS=queued") } })
        #expect(daemon.stop(SIGTERM) == 0)
        #expect(waitUntil(timeout: 5) { listener.messages.contains { $0.contains("STOPPING=1") } })
        #expect(listener.messages.first { $0.contains("READY=1") }.map { listener.messages.firstIndex(of: $0)! } == 0, "READY comes first")
    }

    @Test func noWatchdogWithoutSystemdAskingForIt() throws {
        let listener = try NotifyListener()
        let env = try CtlEnvironment()
        let daemon = DaemonProcess(env: env)
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path])
        #expect(waitUntil(timeout: 10) { listener.messages.contains { $0.contains("READY=1") } })
        usleep(500_000)
        #expect(!listener.messages.contains("WATCHDOG=1"))
    }

    @Test func sighupReloadsTheConfigFileAndKeepsTheOldOneWhenInvalid() throws {
        let oldRelay = try SMTPTestServer(), newRelay = try SMTPTestServer()
        let listener = try NotifyListener()
        let env = try CtlEnvironment(platformPort: oldRelay.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path])
        try daemon.waitFor(try daemon.enqueue(tenant: nil, subject: "before"), .sent)

        let original = try String(contentsOfFile: env.configPath, encoding: .utf8)
        try original.replacingOccurrences(of: "port = \(oldRelay.port)", with: "port = \(newRelay.port)")
            .write(toFile: env.configPath, atomically: true, encoding: .utf8)
        daemon.signal(SIGHUP)
        #expect(waitUntil(timeout: 10) { daemon.log().contains("reloaded") })
        #expect(daemon.log().contains("changed=platform"))
        #expect(listener.messages.contains { $0.contains("RELOADING=1") })
        // READY=1 follows the log line; the datagram may still be on its way.
        #expect(waitUntil(timeout: 10) { listener.messages.filter { $0.contains("READY=1") }.count >= 2 }, "READY again after the reload")
        try daemon.waitFor(try daemon.enqueue(tenant: nil, subject: "after"), .sent)
        #expect(newRelay.messages().compactMap { $0.header("Subject") } == ["after"])

        try (original + "\nbogus_key = 1\n").write(toFile: env.configPath, atomically: true, encoding: .utf8)
        daemon.signal(SIGHUP)
        #expect(waitUntil(timeout: 10) { daemon.log().contains("reload failed") })
        #expect(daemon.log().contains("unknown key secrets.bogus_key"))
        try daemon.waitFor(try daemon.enqueue(tenant: nil, subject: "still"), .sent)
        #expect(newRelay.messages().compactMap { $0.header("Subject") } == ["after", "still"], "the running config stayed")
        #expect(daemon.stop() == 0)
    }

    @Test func sigtermInABurstLosesNothingAndLeavesNothingSending() throws {
        let server = try SMTPTestServer()
        let listener = try NotifyListener()
        let env = try CtlEnvironment()
        // Slow enough that the burst is still going when the signal comes.
        try env.addConfig(name: "main", port: server.port, extra: ["--max-connections", "2", "--rate-per-minute", "1200"])
        let daemon = DaemonProcess(env: env)
        try daemon.enqueueMany(100, subject: "burst")
        try daemon.start(environment: ["NOTIFY_SOCKET": listener.path])
        #expect(waitUntil(timeout: 20) { server.messages().count >= 5 })
        let started = Date()
        #expect(daemon.stop(SIGTERM) == 0)
        #expect(Date().timeIntervalSince(started) < 10, "stopped within its bound")
        #expect(listener.messages.contains { $0.contains("STOPPING=1") })
        #expect(try daemon.count(status: .sending) == 0, "unstarted leases were released")
        let sent = try daemon.count(status: .sent)
        #expect(sent < 100, "the signal came in the middle")
        #expect(sent + (try daemon.count(status: .queued)) == 100)
        #expect(server.messages().count == sent, "every row marked sent was delivered, and only those")

        try daemon.start()
        #expect(waitUntil(timeout: 30) { (try? daemon.count(status: .sent)) == 100 })
        #expect(Set(server.messages().compactMap { $0.header("Subject") }).count == 100)
    }
}
