import Logging
import ServiceLifecycle

/// Assembles the daemon's services and runs them until SIGTERM or SIGINT.
///
/// This first version opens and migrates the queue and reports what it will route;
/// the delivery services join the group in the delivery engine.
public struct MailrouteDaemon: Sendable {
    public let settings: MailrouteConfiguration
    public let configPath: String
    public let logger: Logger

    public init(settings: MailrouteConfiguration, configPath: String, logger: Logger) {
        self.settings = settings
        self.configPath = configPath
        self.logger = logger
    }

    public func run() async throws {
        let store = try QueueStore(path: settings.queue.path)
        let migrations = try store.appliedMigrations()
        let configs = try store.configs()
        let platform = settings.platform
        logger.info(
            "started",
            metadata: [
                "config_file": "\(configPath)",
                "database": "\(store.path)",
                "schema": "\(migrations.last ?? "none")",
                "configurations": "\(configs.count)",
                "tenants": "\(Set(configs.map(\.tenant)).count)",
                "platform_relay": "\(platform.host):\(platform.port)",
            ])
        let notifier = SystemdNotifier()
        notifier.ready(status: "\(configs.count) SMTP configuration(s); delivery not enabled in this version")
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: IdleService(notifier: notifier))],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
        logger.info("stopped")
    }
}

/// Holds the group open until shutdown is requested.
struct IdleService: Service {
    let notifier: SystemdNotifier

    func run() async throws {
        try? await gracefulShutdown()
        notifier.stopping()
    }
}
