import Foundation
import Testing

@testable import MailrouteCore

/// The shared queue's decisions as pure functions (SPEC §8): how configurations are shared
/// out among daemons, which rows a claim leaves to another daemon, and the `[queue]` keys.
@Suite struct SharedQueueDecisionTests {
    @Test func aDaemonTakesOnlyItsShareOfNewConfigurations() {
        // Alone, everything.
        #expect(ClaimPlan.newConfigurations(mine: 0, owned: 0, wanting: 3, daemons: 1) == 3)
        // Three daemons, three busy tenants: one each, whoever claims first.
        #expect(ClaimPlan.newConfigurations(mine: 0, owned: 0, wanting: 3, daemons: 3) == 1)
        #expect(ClaimPlan.newConfigurations(mine: 0, owned: 1, wanting: 2, daemons: 3) == 1)
        #expect(ClaimPlan.newConfigurations(mine: 1, owned: 2, wanting: 1, daemons: 3) == 0, "it has its one")
        // A thousand tenants among three: 334 at most.
        #expect(ClaimPlan.newConfigurations(mine: 0, owned: 0, wanting: 1000, daemons: 3) == 334)
        // One configuration and three daemons: the first takes it, the others have none to take.
        #expect(ClaimPlan.newConfigurations(mine: 0, owned: 0, wanting: 1, daemons: 3) == 1)
        #expect(ClaimPlan.newConfigurations(mine: 0, owned: 0, wanting: 2, daemons: 0) == 2, "no count yet: alone")
    }

    @Test func whatADaemonHoldsBeyondItsShareIsHandedOver() {
        #expect(ClusterShare(daemons: 3, owned: 3, mine: 3).excess == 2, "the first took all before the others came")
        #expect(ClusterShare(daemons: 3, owned: 3, mine: 1).excess == 0)
        #expect(ClusterShare(daemons: 2, owned: 3, mine: 2).excess == 0, "the share is rounded up")
        #expect(ClusterShare(daemons: 1, owned: 5, mine: 5).excess == 0)
        #expect(ClusterShare(daemons: 4, owned: 1000, mine: 1000).excess == 750)
    }

    private func plan(room: [Int64?: Int] = [:], foreign: Set<Int64> = []) -> ClaimPlan {
        var plan = ClaimPlan(
            now: 0, leaseSeconds: 300, expire: false, limit: 100, room: room, defaultMaxConnections: 2, categories: [:])
        plan.foreign = foreign
        return plan
    }

    private func resolution(_ id: Int64, status: ConfigStatus = .verified, fallback: FallbackPolicy = .platform) -> RouteResolution {
        var config = SMTPConfigRecord(tenant: "t\(id)", name: "main", host: "h", fromAddress: "a@h.test")
        config.id = id
        config.status = status
        config.fallback = fallback
        if status == .error { config.errorKind = .connectionFailed }
        return RouteResolution(config: config, step: .default, trail: [])
    }

    @Test func rowsOfAConfigurationAnotherDaemonDrivesAreLeftToIt() {
        let rows = [resolution(1), resolution(2), resolution(1), resolution(3)]
        let chosen = plan(foreign: [1]).choose(rows.map { (id: 0, resolution: $0) })
        #expect(chosen == [1, 3], "only tenant 2's and 3's rows")
    }

    @Test func aDownConfigurationsRowsGoToTheRelayWhoeverDrivesIt() {
        // Down: its rows go to the platform relay, which every daemon drives for itself.
        let down = resolution(1, status: .error)
        #expect(plan().connectionTarget(down) == .some(nil))
        #expect(plan(foreign: [1]).choose([(id: 0, resolution: down)]) == [0])
        // Down with fallback = none: taken only to wait again, no connection at all.
        #expect(plan().connectionTarget(resolution(1, status: .error, fallback: .none)) == nil)
        #expect(plan().connectionTarget(resolution(7)) == .some(7))
        #expect(plan().connectionTarget(RouteResolution(config: nil, step: .platform, trail: [])) == .some(nil))
    }

    @Test func theQueueKeysForPostgreSQL() throws {
        let config = try MailrouteConfiguration(
            toml: """
                [queue]
                backend = "postgres"
                url = "postgres://mailroute@db.internal:5433/mail?sslmode=require"
                password_file = "pg.password"
                max_db_connections = 12
                """, baseDirectory: "/etc/mailroute")
        #expect(config.queue.backend == .postgres)
        #expect(config.queue.passwordFile == "/etc/mailroute/pg.password")
        #expect(config.queue.maxDatabaseConnections == 12)
        let url = try PostgresURL(config.queue.url)
        #expect(url.user == "mailroute" && url.host == "db.internal" && url.port == 5433 && url.database == "mail")
        #expect(url.tls == .require)
        #expect(try PostgresURL("postgres://m@h/d").port == 5432)
        #expect(try PostgresURL("postgres://m@h/d").tls == .prefer)
        #expect(url.description == "postgres://mailroute@db.internal:5433/mail")
        #expect(try MailrouteConfiguration(toml: "", baseDirectory: "/").queue.backend == .sqlite, "SQLite stays the default")
    }

    @Test(arguments: [
        ("postgres://mailroute:secret@db/mail", "must not hold the password"),
        ("mysql://mailroute@db/mail", "must look like postgres://"),
        ("postgres://db/mail", "names no user"),
        ("postgres://mailroute@db", "names no database"),
        ("postgres://mailroute@db/mail?ssl=1", "unknown parameter ssl"),
        ("", "is required with backend = \"postgres\""),
    ])
    func aBadURLIsOneLineNamingWhatIsWrong(url: String, says: String) throws {
        let toml = "[queue]\nbackend = \"postgres\"\nurl = \"\(url)\"\n"
        let error = #expect(throws: ConfigFileError.self) { try MailrouteConfiguration(toml: toml, baseDirectory: "/") }
        #expect(error?.description.hasPrefix("[queue] url") == true)
        #expect(error?.description.contains(says) == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("secret") == false, "never the password")
    }

    @Test func anUnknownBackendIsRefused() {
        #expect(throws: ConfigFileError.self) {
            try MailrouteConfiguration(toml: "[queue]\nbackend = \"mysql\"\n", baseDirectory: "/")
        }
    }

    @Test func thePasswordComesFromTheCredentialFirst() throws {
        let dir = Paths.temporaryDirectory("pgpass")
        let credentials = dir.appendingPathComponent("creds")
        try FileManager.default.createDirectory(at: credentials, withIntermediateDirectories: true)
        try "from-credential\n".write(to: credentials.appendingPathComponent(PostgresURL.credentialName), atomically: true, encoding: .utf8)
        let file = dir.appendingPathComponent("pg.password").path
        try "from-file\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try PostgresURL.password(file: file, environment: ["CREDENTIALS_DIRECTORY": credentials.path]) == "from-credential")
        #expect(try PostgresURL.password(file: file, environment: [:]) == "from-file")
        #expect(try PostgresURL.password(file: "", environment: [:]) == nil, "trust or peer authentication")
        #expect(throws: ConfigFileError.self) { try PostgresURL.password(file: dir.appendingPathComponent("nope").path, environment: [:]) }
    }
}
