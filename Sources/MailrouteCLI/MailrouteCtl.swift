import ArgumentParser
import Foundation
import MailrouteCore

/// `mailroutectl`: the operator's and the application's tool (SPEC §5).
public struct MailrouteCtl: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mailroutectl",
        abstract: "Manage Mailroute's SMTP configurations, routes and queue.",
        subcommands: [
            ConfigCommand.self, RouteCommand.self, EnqueueCommand.self, QueueCommand.self, MigrateCommand.self, KeyCommand.self,
            DKIMCommand.self,
        ])

    public init() {}

    /// Runs with `--config FILE` and `--json` accepted before the subcommand too
    /// (`mailroutectl --config F route set … --config N`), as operators type them.
    /// A leading `--config` becomes `$MAILROUTE_CONFIG`, because after the subcommand
    /// `route set --config` names a configuration.
    public static func main(arguments: [String]) async {
        CoreDumps.forbid()
        var rest = arguments[...]
        var trailing: [String] = []
        while let first = rest.first {
            if first == "--config" || first == "--config-file", rest.count >= 2 {
                setenv("MAILROUTE_CONFIG", rest[rest.startIndex + 1], 1)
                rest = rest.dropFirst(2)
            } else if first == "--json" {
                trailing.append(first)
                rest = rest.dropFirst()
            } else {
                break
            }
        }
        await main(Array(rest) + trailing)
    }
}
