import ArgumentParser

/// `mailroutectl`: the operator's and the application's tool (SPEC §5).
public struct MailrouteCtl: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mailroutectl",
        abstract: "Manage Mailroute's SMTP configurations, routes and queue.",
        subcommands: [ConfigCommand.self, RouteCommand.self, MigrateCommand.self, KeyCommand.self])

    public init() {}

    /// Runs with `--config` and `--json` accepted before the subcommand too
    /// (`mailroutectl --config F config list`), as operators type them.
    public static func main(arguments: [String]) {
        main(hoistingGlobalOptions(arguments))
    }

    static func hoistingGlobalOptions(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var rest = arguments[...]
        while let first = rest.first, first.hasPrefix("--") {
            if first == "--config", rest.count >= 2 {
                leading += rest.prefix(2)
                rest = rest.dropFirst(2)
            } else if first.hasPrefix("--config=") || first == "--json" {
                leading.append(first)
                rest = rest.dropFirst()
            } else {
                break
            }
        }
        return Array(rest) + leading
    }
}
