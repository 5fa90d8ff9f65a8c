import Foundation
import Hummingbird
import Logging
import MailrouteCore
import NIOCore
import ServiceLifecycle

/// `GET /metrics`'s body, rendered by whoever holds the daemon's series.
public typealias MetricsExposition = @Sendable () async -> [UInt8]

/// The HTTP API of SPEC §9, one more `Service` of the daemon's group: it starts once the
/// queue is open, and on SIGTERM stops taking connections and finishes the requests in flight
/// (Hummingbird's server under the group's graceful shutdown).
public struct APIService: Service {
    let settings: MailrouteConfiguration
    let store: any QueueBackend
    let tokens: APITokens
    let metrics: MetricsExposition?
    let logger: Logger

    public init(settings: MailrouteConfiguration, store: any QueueBackend, tokens: APITokens, metrics: MetricsExposition?, logger: Logger) {
        self.settings = settings
        self.store = store
        self.tokens = tokens
        self.metrics = metrics
        self.logger = logger
    }

    /// Every route of the API; also what the tests and the OpenAPI drift check look at.
    public func router() -> Hummingbird.Router<BasicRequestContext> {
        let service = ConfigurationService(settings: settings, store: store)
        let limit = settings.api.maxBodyBytes
        let router = Hummingbird.Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorMiddleware(logger: logger))
        router.get("openapi.json") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_json)))
        }
        let metricsGroup = router.group("metrics")
        if settings.api.metricsAuth { metricsGroup.add(middleware: BearerAuthMiddleware(tokens: tokens)) }
        metricsGroup.get { [metrics] _, _ in
            let text = await metrics?() ?? []
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: text)))
        }
        let v1 = router.group("v1").add(middleware: BearerAuthMiddleware(tokens: tokens))
        ConfigurationsAPI(service: service, bodyLimit: limit).register(on: v1)
        RoutesAPI(service: service, bodyLimit: limit).register(on: v1)
        MessagesAPI(queue: service.queue, bodyLimit: limit).register(on: v1)
        return router
    }

    public func run() async throws {
        let address: BindAddress
        switch settings.api.listen {
        case .off: return
        case .tcp(let host, let port): address = .hostname(host, port: port)
        case .unix(let path):
            try Self.removeStaleSocket(path)
            address = .unixDomainSocket(path: path)
        }
        let listen = settings.api.listen
        let app = Application(
            router: router(),
            configuration: .init(address: address, serverName: nil),
            onServerRunning: { [logger] channel in
                if case .unix(let path) = listen {
                    // The platform's proxy reaches the socket through the group (SPEC §9).
                    chmod(path, 0o660)
                }
                let bound = channel.localAddress.map { "\($0.ipAddress ?? $0.pathname ?? "?"):\($0.port ?? 0)" } ?? "\(listen)"
                logger.info("api listening", metadata: [LogKey.listen: "\(listen)", "address": "\(bound)"])
            },
            logger: Self.quiet(logger))
        try await app.run()
    }

    /// A socket file left by a daemon that was killed would make the bind fail; anything
    /// else at that path is not ours to remove.
    static func removeStaleSocket(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw ConfigFileError("[api] listen: \(path) exists and is not a socket")
        }
        unlink(path)
    }

    /// Hummingbird logs each request at debug and its own startup at info; the daemon's own
    /// "api listening" line says what an operator needs, once.
    static func quiet(_ logger: Logger) -> Logger {
        var logger = logger
        logger.logLevel = max(logger.logLevel, .notice)
        return logger
    }
}
