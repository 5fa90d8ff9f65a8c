import Foundation
import Logging
import PostgresNIO

/// One PostgreSQL server for the whole test process, and a fresh database per test on it.
///
/// `scripts/test` starts a cluster with `scripts/pg-cluster` and passes its URL in
/// MAILROUTE_TEST_PG_URL (password in MAILROUTE_TEST_PG_PASSWORD, default "mailroute-test");
/// without it, the first test that asks starts one itself and stops it when the process exits.
enum PostgresTestServer {
    struct Server: Sendable {
        var host: String
        var port: Int
        var user: String
        var password: String
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static var logger: Logger {
        var logger = Logger(label: "mailroute.tests.postgres")
        logger.logLevel = .warning
        return logger
    }

    /// Started at most once, whichever test gets here first, on a thread of its own: waiting
    /// for `pg-cluster` on a cooperative thread (two here) while another test waited for the
    /// same start left no thread to notice the script had ended.
    private static let startedInBackground = Task<Server, any Error> {
        try await withCheckedThrowingContinuation { done in
            Thread { done.resume(with: Result { try server() }) }.start()
        }
    }

    private static let startLock = NSLock()
    /// Set once, under `startLock`, by the first caller of `server()`.
    nonisolated(unsafe) private static var started: Result<Server, any Error>?

    /// The server, started (or found) on the caller's thread the first time: for synchronous
    /// callers (`CtlEnvironment`). Starting blocks only on `pg-cluster` (posix_spawn and
    /// waitpid), never on another task, so it is safe wherever it is called.
    static func server() throws -> Server {
        try startLock.withLock {
            if let started { return try started.get() }
            let result = Result { try startOrFind() }
            started = result
            return try result.get()
        }
    }

    /// A new, empty database owned by the test role, made synchronously with `psql`; the
    /// `[queue] url` naming it (without password, `sslmode=disable`) and a `psql` for it.
    static func freshDatabaseSync(on given: Server? = nil) throws -> (url: String, psql: PSQL) {
        let server = try given ?? server()
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24)
        let admin = PSQL(host: server.host, port: server.port, user: server.user, password: server.password, database: "postgres")
        _ = try admin.run(#"CREATE DATABASE \#(name) OWNER "\#(server.user)";"#)
        let psql = PSQL(host: server.host, port: server.port, user: server.user, password: server.password, database: String(name))
        return ("postgres://\(server.user)@\(server.host):\(server.port)/\(name)?sslmode=disable", psql)
    }

    /// Set once, before atexit can read it, by the only caller of `startOrFind` (under `startLock`).
    nonisolated(unsafe) private static var ownCluster: String?

    static var script: String { Paths.packageRoot.appendingPathComponent("scripts/pg-cluster").path }

    static func shared() async throws -> (host: String, port: Int, user: String, password: String) {
        let server = try await startedInBackground.value
        return (server.host, server.port, server.user, server.password)
    }

    /// A new, empty database owned by the test role; its URL (without password), as
    /// [queue] url takes it.
    static func freshDatabase() async throws -> String {
        let server = try await shared()
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24)
        try await withConnection("postgres://\(server.user)@\(server.host):\(server.port)/postgres") { connection in
            // CREATE DATABASE returns no rows; reading them waits for it to finish (or fail).
            for try await _ in try await connection.query(
                PostgresQuery(unsafeSQL: #"CREATE DATABASE \#(name) OWNER "\#(server.user)""#), logger: logger) {}
        }
        return "postgres://\(server.user)@\(server.host):\(server.port)/\(name)"
    }

    /// A connection to the database a `freshDatabase()` URL names, with the shared password.
    static func connect(_ url: String) async throws -> PostgresConnection {
        let server = try await shared()
        guard let components = URLComponents(string: url), let host = components.host else {
            throw Failure(description: "not a PostgreSQL URL: \(url)")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        let configuration = PostgresConnection.Configuration(
            host: host, port: components.port ?? 5432, username: components.user ?? server.user,
            password: server.password, database: database.isEmpty ? "postgres" : database, tls: .disable)
        return try await PostgresConnection.connect(
            configuration: configuration, id: Int.random(in: 1...Int(Int32.max)), logger: logger)
    }

    /// Runs `body` on a new connection and closes it, whatever `body` does.
    static func withConnection<T: Sendable>(
        _ url: String, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await connect(url)
        do {
            let value = try await body(connection)
            try await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw error
        }
    }

    private static func startOrFind() throws -> Server {
        let environment = ProcessInfo.processInfo.environment
        let password = environment["MAILROUTE_TEST_PG_PASSWORD"] ?? "mailroute-test"
        if let url = environment["MAILROUTE_TEST_PG_URL"], !url.isEmpty {
            return try parse(url, password: password)
        }
        let directory = "/tmp/mailroute-test-pg-\(getpid())"
        var output = ""
        // closedPort() is free when asked, not when the server binds it: another test's
        // server may take it in between, so a failed start gets a second port.
        for _ in 0..<3 {
            let result = try spawnAndWait([script, "start", directory, String(closedPort())])
            if result.status == 0 {
                ownCluster = directory
                atexit { PostgresTestServer.stopOwnCluster() }
                return try parse(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines), password: password)
            }
            output = result.output
            _ = try? spawnAndWait([script, "stop", directory])
        }
        throw Failure(description: "scripts/pg-cluster start failed: \(output)")
    }

    private static func stopOwnCluster() {
        guard let directory = ownCluster else { return }
        _ = try? spawnAndWait([script, "stop", directory])
    }

    /// `bash ARGS…` to completion (posix_spawn and waitpid: `runProcess`).
    static func spawnAndWait(_ arguments: [String]) throws -> ProcessResult {
        try runProcess(URL(fileURLWithPath: "/bin/bash"), arguments, timeout: 300)
    }

    private static func parse(_ url: String, password: String) throws -> Server {
        guard let components = URLComponents(string: url), let host = components.host else {
            throw Failure(description: "MAILROUTE_TEST_PG_URL is not a PostgreSQL URL: \(url)")
        }
        return Server(host: host, port: components.port ?? 5432, user: components.user ?? "mailroute", password: password)
    }
}

/// A PostgreSQL of one test's own, for what the shared one must not suffer (being stopped).
final class PrivateCluster: @unchecked Sendable {
    let directory = "/tmp/mailroute-test-pg-own-\(getpid())-\(UUID().uuidString.prefix(8))"
    let port = closedPort()
    let server: PostgresTestServer.Server

    init() throws {
        let result = try PostgresTestServer.spawnAndWait([PostgresTestServer.script, "start", directory, "\(port)"])
        guard result.status == 0 else { throw PostgresTestServer.Failure(description: "pg-cluster start: \(result.output)") }
        server = .init(host: "127.0.0.1", port: port, user: "mailroute", password: "mailroute-test")
    }

    /// The server stops; its data stays.
    func pause() throws {
        let result = try PostgresTestServer.spawnAndWait([PostgresTestServer.script, "pause", directory])
        guard result.status == 0 else { throw PostgresTestServer.Failure(description: "pg-cluster pause: \(result.output)") }
    }

    func resume() throws {
        let result = try PostgresTestServer.spawnAndWait([PostgresTestServer.script, "start", directory, "\(port)"])
        guard result.status == 0 else { throw PostgresTestServer.Failure(description: "pg-cluster start: \(result.output)") }
    }

    func stop() {
        _ = try? PostgresTestServer.spawnAndWait([PostgresTestServer.script, "stop", directory])
    }
}
