import Foundation
import Testing

@testable import MailrouteCore

/// When the draining loop's next claim is worth a transaction (`PoolRegistry.wantsWork`).
@Suite struct PoolRegistryTests {
    final class StubPool: SMTPPool, @unchecked Sendable {
        let name: String
        let endpoint: SMTPEndpoint
        let limits: PoolLimits
        var load = 0
        var secondsPerMessage: Double? = 0.2  // a slow server: one message per connection

        init(name: String, endpoint: SMTPEndpoint, limits: PoolLimits) {
            self.name = name
            self.endpoint = endpoint
            self.limits = limits
        }

        func perform(_ work: PoolWork) async -> PoolCompletion { .notStarted }
        func close(timeout: Double) async {}
    }

    struct StubTransport: SMTPTransport {
        func makePool(name: String, endpoint: SMTPEndpoint, limits: PoolLimits) -> any SMTPPool {
            StubPool(name: name, endpoint: endpoint, limits: limits)
        }
    }

    func config(_ id: Int64, connections: Int) -> SMTPConfigRecord {
        var config = SMTPConfigRecord(tenant: "t\(id)", name: "main", host: "h\(id).test", fromAddress: "a@h\(id).test")
        config.id = id
        config.maxConnections = connections
        return config
    }

    /// With one message per connection every free place is an idle connection, and a pool
    /// whose only message finished has load 0: both must bring the next claim at once, or a
    /// slow one-connection tenant sends once per poll interval while others drain.
    @Test func aSlowPoolAsksForWorkAsSoonAsAPlaceIsFree() throws {
        var registry = PoolRegistry(transport: StubTransport())
        let settings = MailrouteConfiguration()
        let single = try #require(registry.pool(for: config(1, connections: 1), settings: settings, secrets: nil) as? StubPool)
        let four = try #require(registry.pool(for: config(2, connections: 4), settings: settings, secrets: nil) as? StubPool)
        single.load = 1
        four.load = 4
        _ = registry.roomForClaim()
        #expect(!registry.wantsWork(), "both full")
        single.load = 0
        #expect(registry.wantsWork(), "the one-connection pool's message finished")
        _ = registry.roomForClaim()
        #expect(!registry.wantsWork(), "it had room at that claim and got nothing: no rows wait for it")
        four.load = 3
        #expect(registry.wantsWork(), "one idle connection of four")
        four.secondsPerMessage = 0.001
        four.load = 60  // 16 per connection: 64 places, a quarter is 16
        #expect(!registry.wantsWork(), "a fast pool waits for a quarter of its places")
        four.load = 48
        #expect(registry.wantsWork())
    }

    /// On a shared queue an idle pool is closed and its configuration given up: only after
    /// `after` seconds without work, never the relay's, and a busy one never.
    @Test func idlePoolsAreRetiredAfterTheirTimeOnly() throws {
        var registry = PoolRegistry(transport: StubTransport())
        let settings = MailrouteConfiguration()
        let idle = try #require(registry.pool(for: config(1, connections: 1), settings: settings, secrets: nil) as? StubPool)
        let busy = try #require(registry.pool(for: config(2, connections: 1), settings: settings, secrets: nil) as? StubPool)
        _ = registry.platformPool(settings: settings, password: nil)
        busy.load = 1
        #expect(registry.retireIdle(now: 100, after: 60).isEmpty, "first seen now")
        #expect(registry.retireIdle(now: 159, after: 60).isEmpty)
        let retired = registry.retireIdle(now: 160, after: 60)
        #expect(retired.map(\.0) == [1])
        #expect(retired.first?.1 === idle)
        #expect(!registry.hasPool(configID: 1) && registry.hasPool(configID: 2))
        #expect(registry.retireIdle(now: 1000, after: 60).isEmpty, "the busy one stays, and the relay's")
        busy.load = 0
        #expect(registry.retireIdle(now: 1001, after: 60).isEmpty, "idle since its last look")
        #expect(registry.retireIdle(now: 1061, after: 60).map(\.0) == [2])
    }

    @Test func handedOverPoolsComeOutWithTheirIds() throws {
        var registry = PoolRegistry(transport: StubTransport(), pacing: .server)
        let settings = MailrouteConfiguration()
        let one = try #require(registry.pool(for: config(1, connections: 2), settings: settings, secrets: nil) as? StubPool)
        _ = registry.pool(for: config(2, connections: 2), settings: settings, secrets: nil)
        one.load = 3
        #expect(registry.load(configID: 1) == 3 && registry.load(configID: 2) == 0)
        #expect(registry.configIDs == [1, 2])
        #expect(registry.retire(configIDs: [2]).map(\.0) == [2])
        #expect(registry.configIDs == [1])
        #expect(registry.retire(configIDs: []).isEmpty)
    }
}
