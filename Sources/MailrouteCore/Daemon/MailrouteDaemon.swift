import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// What a service outside Core (the HTTP API) is built from, once the queue is open.
public struct DaemonParts: Sendable {
    /// At start; `live` follows SIGHUP reloads.
    public let settings: MailrouteConfiguration
    public let live: CurrentSettings
    public let store: any QueueBackend
    /// `GET /metrics`'s body.
    public let metrics: (@Sendable () async -> [UInt8])?
    public let logger: Logger
}

/// Assembles the daemon's services and runs them until SIGTERM or SIGINT.
public struct MailrouteDaemon: Sendable {
    public let settings: MailrouteConfiguration
    public let configPath: String
    public let logger: Logger
    /// More services for the group (the HTTP API); throwing refuses the start.
    public let services: @Sendable (DaemonParts) throws -> [any Service]

    public init(
        settings: MailrouteConfiguration, configPath: String, logger: Logger,
        services: @escaping @Sendable (DaemonParts) throws -> [any Service] = { _ in [] }
    ) {
        self.settings = settings
        self.configPath = configPath
        self.logger = logger
        self.services = services
    }

    public func run() async throws {
        try await QueueBackends.with(settings.queue, logger: logger, daemon: true) { store in try await run(store) }
    }

    private func run(_ store: any QueueBackend) async throws {
        let metrics = MailrouteMetrics(registry: Self.metricsRegistry, store: store)
        let migrations = try await store.appliedMigrations()
        let configs = try await store.configs()
        let secrets: SecretBox?
        do {
            secrets = try KeyFile.load(configured: settings.secrets.keyFile)
        } catch let error as SecretError where error.refusesStart {
            throw error
        } catch {
            // Configurations without a password still work; those with one fail and fall back.
            secrets = nil
            if configs.contains(where: \.hasPassword) {
                logger.error("no encryption key: configurations with a password cannot log in", metadata: ["error": "\(error)"])
            }
        }
        // A SIGHUP before the reload service listens must not kill the daemon (its default action).
        signal(SIGHUP, SIG_IGN)
        let notifier = SystemdNotifier()
        let dispatcher = try Dispatcher(
            settings: settings, store: store, secrets: secrets, logger: logger, notifier: notifier, transport: CurlMultiTransport(),
            metrics: metrics)
        let live = CurrentSettings(settings)
        let more = try services(
            DaemonParts(settings: settings, live: live, store: store, metrics: { await metrics.exposition() }, logger: logger))
        let platform = settings.platform
        logger.info(
            "started",
            metadata: [
                "config_file": "\(configPath)",
                "database": "\(store.location)",
                "backend": "\(settings.queue.backend.rawValue)",
                "schema": "\(migrations.last ?? "none")",
                "configurations": "\(configs.count)",
                "tenants": "\(Set(configs.map(\.tenant)).count)",
                "platform_relay": "\(platform.host):\(platform.port)",
            ])
        notifier.ready(status: "\(configs.count) SMTP configuration(s), delivering")
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: dispatcher),
                    .init(service: ReloadService(
                        configPath: configPath, dispatcher: dispatcher, notifier: notifier, logger: logger, current: settings,
                        live: live)),
                ] + more.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
        logger.info("stopped")
    }

    /// The process's one registry, given to swift-metrics on first use: the libraries' series
    /// (the HTTP server's) are served beside ours, and `MetricsSystem` may be bootstrapped only
    /// once in a process.
    private static let metricsRegistry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }()
}
