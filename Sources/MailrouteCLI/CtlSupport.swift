import ArgumentParser
import Foundation
import GRDB
import Logging
import PostgresNIO
import MailrouteCore

extension SMTPSecurity: ExpressibleByArgument {}
extension FallbackPolicy: ExpressibleByArgument {}
extension DKIMMode: ExpressibleByArgument {}
extension MessageStatus: ExpressibleByArgument {}

/// Options every command takes.
struct GlobalOptions: ParsableArguments {
    @Option(
        name: [.customLong("config"), .customLong("config-file")],
        help: "The config file (default: $MAILROUTE_CONFIG, else /etc/mailroute/mailroute.toml).")
    var configFile: String?

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    var context: CtlContext { CtlContext(configFile: configFile, json: json) }
}

/// The global options of `route set`, whose own `--config` names a configuration (SPEC §5):
/// there the file is `--config-file`, or `--config` before the subcommand.
struct GlobalOptionsWithoutConfig: ParsableArguments {
    @Option(name: .customLong("config-file"), help: "The config file (default: $MAILROUTE_CONFIG, else /etc/mailroute/mailroute.toml).")
    var configFile: String?

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    var context: CtlContext { CtlContext(configFile: configFile, json: json) }
}

struct CtlContext {
    var configFile: String?
    var json: Bool

    var configPath: String {
        configFile ?? ProcessInfo.processInfo.environment["MAILROUTE_CONFIG"] ?? "/etc/mailroute/mailroute.toml"
    }

    func settings() throws -> MailrouteConfiguration {
        try MailrouteConfiguration(contentsOfFile: configPath)
    }

    /// Loads the config file, opens (and migrates) the queue, runs `body`, and closes the
    /// queue's connections (PostgreSQL) whatever happened.
    func withService<T>(_ body: (ConfigurationService) async throws -> T) async throws -> T {
        let settings = try settings()
        // Quiet: a command prints its own result; the daemon is what logs.
        let quiet = Logger(label: "mailroutectl", factory: { _ in SwiftLogNoOpLogHandler() })
        return try await QueueBackends.with(settings.queue, logger: quiet) { store in
            try await body(ConfigurationService(settings: settings, store: store))
        }
    }
}

/// A `mailroutectl` command: its errors become one line on stderr and exit status 1.
protocol CtlCommand: AsyncParsableCommand {
    func execute() async throws
}

extension CtlCommand {
    func run() async throws {
        do {
            try await execute()
        } catch let exit as ExitCode {
            throw exit
        } catch {
            FileHandle.standardError.write(Data("mailroutectl: \(describe(error))\n".utf8))
            throw ExitCode.failure
        }
    }
}

/// One line an operator can act on, whatever threw.
func describe(_ error: Error) -> String {
    switch error {
    case let error as DatabaseError:
        // SQLite's own sentence names the column or the constraint that refused the change.
        return error.message ?? "\(error)"
    case let error as PSQLError:
        // PostgreSQL's own sentence, as SQLite's: it names the column or the rule. The rest of
        // the error (the query, its binds) stays out of an operator's terminal.
        return PostgresStore.describe(error)
    case let error as CustomStringConvertible:
        return error.description.split(separator: "\n").joined(separator: " ")
    default:
        return "\(error)"
    }
}

enum Output {
    static func json<T: Encodable>(_ value: T) throws {
        let data = try JSONEncoder.mailroute().encode(value)
        print(String(decoding: data, as: UTF8.self))
    }

    /// A small acknowledgement (`{"id": 42}`), with numbers and booleans as JSON's own.
    static func object(_ value: [String: Any]) throws {
        let data = try JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
    }

    /// Columns padded to their widest cell; the last column is not padded.
    static func table(_ header: [String], _ rows: [[String]]) {
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        for row in all {
            let cells = row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }
            print(cells.joined(separator: "  "))
        }
    }

    static func fields(_ pairs: [(String, String)]) {
        let width = pairs.map(\.0.count).max() ?? 0
        for (key, value) in pairs {
            print("\(key.padding(toLength: width, withPad: " ", startingAt: 0))  \(value)")
        }
    }
}

func formatTime(_ seconds: Double?) -> String {
    guard let seconds else { return "-" }
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: Date(timeIntervalSince1970: seconds))
}
