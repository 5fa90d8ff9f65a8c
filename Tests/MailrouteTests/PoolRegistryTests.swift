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
}
