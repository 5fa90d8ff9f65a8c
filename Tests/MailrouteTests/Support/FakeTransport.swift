import Foundation
@testable import MailrouteCore

/// An in-process transport for the engine's decisions: no sockets, scripted answers per
/// pool, and a record of every send. Real delivery is tested against real servers elsewhere.
final class FakeTransport: SMTPTransport, @unchecked Sendable {
    enum Behaviour: Sendable {
        case accept
        case fail(DeliveryError)
        /// Fails like this `times` times, then accepts.
        case failThenAccept(DeliveryError, times: Int)
        /// Holds each send until `release()`.
        case hold
    }

    struct Send: Sendable {
        var pool: String
        var from: String
        var to: [String]
        var data: [UInt8]
    }

    private let lock = NSLock()
    private var behaviours: [String: Behaviour] = [:]
    private var sends: [Send] = []
    private var held: [CheckedContinuation<Void, Never>] = []
    private var releasedAll = false

    /// Pools are named `tenant/name`, or `platform` for the relay.
    func set(_ pool: String, _ behaviour: Behaviour) { lock.withLock { behaviours[pool] = behaviour } }
    var recorded: [Send] { lock.withLock { sends } }
    func sends(to pool: String) -> [Send] { recorded.filter { $0.pool == pool } }
    var holding: Int { lock.withLock { held.count } }

    func release() {
        let waiting = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            releasedAll = true
            defer { held.removeAll() }
            return held
        }
        waiting.forEach { $0.resume() }
    }

    func makePool(name: String, endpoint: SMTPEndpoint, limits: PoolLimits) -> any SMTPPool {
        FakePool(name: name, endpoint: endpoint, limits: limits, transport: self)
    }

    fileprivate func answer(_ pool: String, _ send: Send) async -> PoolCompletion {
        let behaviour = lock.withLock { () -> Behaviour in
            sends.append(send)
            let behaviour = behaviours[pool] ?? .accept
            if case .failThenAccept(let error, let times) = behaviour {
                behaviours[pool] = times > 1 ? .failThenAccept(error, times: times - 1) : .accept
            }
            return behaviour
        }
        switch behaviour {
        case .accept:
            return .sent(SendReport(reply: SMTPReply("250 2.0.0 Ok: queued as FAKE"), refused: [], newConnection: false))
        case .fail(let error), .failThenAccept(let error, _):
            return .failed(error)
        case .hold:
            await withCheckedContinuation { continuation in
                let resumeNow = lock.withLock { () -> Bool in
                    if releasedAll { return true }
                    held.append(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
            return .sent(SendReport(reply: SMTPReply("250 2.0.0 Ok: queued as FAKE"), refused: [], newConnection: false))
        }
    }
}

private final class FakePool: SMTPPool, @unchecked Sendable {
    let name: String
    let endpoint: SMTPEndpoint
    let limits: PoolLimits
    private let transport: FakeTransport
    private let lock = NSLock()
    private var inHand = 0
    private var closed = false

    init(name: String, endpoint: SMTPEndpoint, limits: PoolLimits, transport: FakeTransport) {
        self.name = name
        self.endpoint = endpoint
        self.limits = limits
        self.transport = transport
    }

    var load: Int { lock.withLock { inHand } }

    var secondsPerMessage: Double? { nil }

    /// No sockets here: each send in hand stands for a connection open and busy.
    var connections: PoolConnections {
        let inUse = min(load, limits.maxConnections)
        return PoolConnections(open: inUse, busy: inUse)
    }

    func perform(_ work: PoolWork) async -> PoolCompletion {
        let open = lock.withLock { () -> Bool in
            guard !closed else { return false }
            inHand += 1
            return true
        }
        guard open else { return .notStarted }
        defer { lock.withLock { inHand -= 1 } }
        switch work {
        case .send(let from, let to, let data):
            return await transport.answer(name, .init(pool: name, from: from, to: to, data: data))
        case .verify:
            return .verified
        }
    }

    func close(timeout: Double) async {
        lock.withLock { closed = true }
    }
}
