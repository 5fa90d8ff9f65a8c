import Foundation
import Testing

@testable import MailrouteCore

/// Where a test's queue lives.
enum Backend: String, Sendable, CaseIterable, CustomTestStringConvertible {
    /// A file beside the config (`queue.db`).
    case sqlite
    /// A fresh database of its own on the test PostgreSQL server (`PostgresTestServer`).
    case postgres

    var testDescription: String { rawValue }
}

/// A private config file, key and queue database for one test, and a way to run
/// `mailroutectl` against them as an operator would.
struct CtlEnvironment {
    let directory: URL
    let backend: Backend
    /// `.postgres`: the `[queue] url` (no password) and a `psql` on the test's database.
    let postgresURL: String?
    let psql: PSQL?
    var configPath: String { directory.appendingPathComponent("mailroute.toml").path }
    var databasePath: String { directory.appendingPathComponent("queue.db").path }
    var keyPath: String { directory.appendingPathComponent("mailroute.key").path }

    /// - Parameters:
    ///   - delivery: extra `[delivery]` keys, as TOML lines.
    ///   - queue: extra `[queue]` keys, as TOML lines.
    init(
        backend: Backend = .sqlite, platformPort: Int = 2525, delivery: [String] = [], queue: [String] = [], extraTOML: String = "",
        generateKey: Bool = true, postgres: PostgresTestServer.Server? = nil
    ) throws {
        directory = Paths.temporaryDirectory("ctl")
        self.backend = backend
        let queueLocation: String
        switch backend {
        case .sqlite:
            (postgresURL, psql) = (nil, nil)
            queueLocation = #"path = "queue.db""#
        case .postgres:
            let database = try PostgresTestServer.freshDatabaseSync(on: postgres)
            (postgresURL, psql) = (database.url, database.psql)
            let passwordFile = directory.appendingPathComponent("pg.password")
            try (database.psql.password + "\n").write(to: passwordFile, atomically: true, encoding: .utf8)
            queueLocation = """
                backend = "postgres"
                url = "\(database.url)"
                password_file = "pg.password"
                """
        }
        // The tests' servers are on loopback, which tenant configurations may use only when listed.
        var deliveryKeys = [
            "helo_name": "\"mailroute.test\"", "connect_timeout_s": "5", "command_timeout_s": "5",
            "allowed_networks": #"["127.0.0.0/8", "::1/128"]"#,
        ]
        for line in delivery {
            let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            deliveryKeys[parts[0]] = parts[1]
        }
        let toml = """
            [queue]
            \(queueLocation)
            \(queue.joined(separator: "\n"))

            [delivery]
            \(deliveryKeys.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value)" }.joined(separator: "\n"))

            [platform]
            host = "127.0.0.1"
            port = \(platformPort)
            security = "none"
            from_address = "platform@mailroute.test"
            from_name = "Platform"

            [secrets]
            key_file = "mailroute.key"
            \(extraTOML)
            """
        try toml.write(toFile: configPath, atomically: true, encoding: .utf8)
        if generateKey {
            let result = try ctl("key", "generate")
            guard result.status == 0 else { throw CtlError.setupFailed(result.output) }
        }
        if backend == .postgres {
            // The schema, as the daemon or any command would leave it: the tests' enqueuers
            // (`DaemonProcess`) INSERT before either has run.
            let result = try ctl("migrate")
            guard result.status == 0 else { throw CtlError.setupFailed(result.output) }
        }
    }

    @discardableResult
    func ctl(_ arguments: String..., stdin: String? = nil, environment: [String: String] = [:]) throws -> ProcessResult {
        try ctl(arguments, stdin: stdin, environment: environment)
    }

    @discardableResult
    func ctl(_ arguments: [String], stdin: String? = nil, environment: [String: String] = [:]) throws -> ProcessResult {
        try runProcess(Paths.mailroutectl, ["--config", configPath] + arguments, stdin: stdin, environment: environment)
    }

    func settings() throws -> MailrouteConfiguration {
        try MailrouteConfiguration(contentsOfFile: configPath)
    }

    /// The SQLite queue file (`.sqlite` only).
    func store() throws -> QueueStore {
        precondition(backend == .sqlite, "store() opens the SQLite file; use withStore on \(backend)")
        return try QueueStore(path: databasePath)
    }

    /// The queue on either backend, through the store seam, for the length of `body`: on
    /// PostgreSQL a client whose connections close when `body` returns.
    func withStore<T>(_ body: (any QueueBackend) async throws -> T) async throws -> T {
        switch backend {
        case .sqlite:
            return try await body(try store())
        case .postgres:
            return try await QueueBackends.with(try settings().queue, logger: PostgresTestServer.logger, body)
        }
    }

    /// `--json` output decoded as a dictionary.
    func json(_ arguments: String...) throws -> [String: Any] {
        let result = try ctl(arguments + ["--json"])
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw CtlError.notJSON(result.output)
        }
        return object
    }

    func jsonArray(_ arguments: String...) throws -> [[String: Any]] { try jsonArray(arguments) }

    func jsonArray(_ arguments: [String]) throws -> [[String: Any]] {
        let result = try ctl(arguments + ["--json"])
        guard let array = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else {
            throw CtlError.notJSON(result.output)
        }
        return array
    }

    /// Adds a configuration pointing at `server` with sensible defaults.
    @discardableResult
    func addConfig(
        tenant: String = "acme", name: String, port: Int, security: String = "none",
        extra: [String] = [], password: String? = nil
    ) throws -> ProcessResult {
        var args = [
            "config", "add", "--tenant", tenant, "--name", name, "--host", "127.0.0.1", "--port", "\(port)",
            "--security", security, "--from-address", "\(name)@\(tenant).test",
        ]
        if password != nil { args.append("--password-stdin") }
        return try ctl(args + extra, stdin: password.map { $0 + "\n" })
    }
}

enum CtlError: Error {
    case notJSON(String)
    case setupFailed(String)
}
