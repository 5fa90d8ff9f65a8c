import ArgumentParser
import Foundation
import Logging
import MailrouteAPI
import MailrouteCore
import ServiceLifecycle

/// `mailrouted`: parses its one option and hands over to `MailrouteDaemon`.
@available(macOS 10.15, *)
public struct MailrouteDaemonCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mailrouted", abstract: "Mailroute's delivery daemon.")

    @Option(help: "The config file (default: $MAILROUTE_CONFIG, else /etc/mailroute/mailroute.toml).")
    var config: String?

    public init() {}

    /// Parses and runs; what `main()` would do if Swift picked its async overload from main.swift.
    public static func start() async {
        CoreDumps.forbid()
        do {
            var command = try parseAsRoot()
            if let daemon = command as? MailrouteDaemonCommand {
                try await daemon.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// The HTTP API when `[api] listen` is set; no token refuses the start.
    @Sendable static func api(_ parts: DaemonParts) throws -> [any Service] {
        guard parts.settings.api.listen != .off else { return [] }
        let tokens = try APITokens.load(parts.settings.api)
        return [APIService(settings: parts.live, store: parts.store, tokens: tokens, metrics: parts.metrics, logger: parts.logger)]
    }

    public func run() async throws {
        let path = MailrouteConfiguration.absolutePath(
            config ?? ProcessInfo.processInfo.environment["MAILROUTE_CONFIG"] ?? "/etc/mailroute/mailroute.toml")
        let settings: MailrouteConfiguration
        do {
            settings = try MailrouteConfiguration(contentsOfFile: path)
        } catch {
            FileHandle.standardError.write(Data("mailrouted: \(error)\n".utf8))
            throw ExitCode.failure
        }
        let (sink, warning) = MailrouteLogHandler.sink(for: settings.log.target)
        if let warning { FileHandle.standardError.write(Data("mailrouted: warning: \(warning)\n".utf8)) }
        let level = Logger.Level(rawValue: settings.log.level.rawValue) ?? .info
        LoggingSystem.bootstrap { _ in
            var handler = MailrouteLogHandler(label: "mailrouted", sink: sink)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "mailrouted")
        do {
            try await MailrouteDaemon(settings: settings, configPath: path, logger: logger, services: Self.api).run()
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode.failure
        }
    }
}
