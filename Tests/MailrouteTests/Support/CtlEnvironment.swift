import Foundation
@testable import MailrouteCore

/// A private config file, key and queue database for one test, and a way to run
/// `mailroutectl` against them as an operator would.
struct CtlEnvironment {
    let directory: URL
    var configPath: String { directory.appendingPathComponent("mailroute.toml").path }
    var databasePath: String { directory.appendingPathComponent("queue.db").path }
    var keyPath: String { directory.appendingPathComponent("mailroute.key").path }

    init(extraTOML: String = "", generateKey: Bool = true) throws {
        directory = Paths.temporaryDirectory("ctl")
        let toml = """
            [queue]
            path = "queue.db"

            [delivery]
            helo_name = "mailroute.test"
            connect_timeout_s = 5
            command_timeout_s = 5

            [platform]
            host = "127.0.0.1"
            port = 2525
            security = "none"
            from_address = "platform@mailroute.test"

            [secrets]
            key_file = "mailroute.key"
            \(extraTOML)
            """
        try toml.write(toFile: configPath, atomically: true, encoding: .utf8)
        if generateKey {
            let result = try ctl("key", "generate")
            precondition(result.status == 0, result.output)
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

    func store() throws -> QueueStore {
        try QueueStore(path: databasePath)
    }

    /// `--json` output decoded as a dictionary.
    func json(_ arguments: String...) throws -> [String: Any] {
        let result = try ctl(arguments + ["--json"])
        guard let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw CtlError.notJSON(result.output)
        }
        return object
    }

    func jsonArray(_ arguments: String...) throws -> [[String: Any]] {
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
}
