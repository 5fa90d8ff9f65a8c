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
    /// Listen address, tokens and limits as at start; the rest read per request, as reloaded.
    let settings: MailrouteConfiguration
    let live: CurrentSettings
    let store: any QueueBackend
    let tokens: APITokens
    let metrics: MetricsExposition?
    let logger: Logger

    public init(settings live: CurrentSettings, store: any QueueBackend, tokens: APITokens, metrics: MetricsExposition?, logger: Logger) {
        self.settings = live.value
        self.live = live
        self.store = store
        self.tokens = tokens
        self.metrics = metrics
        self.logger = logger
    }

    /// Every route of the API; also what the tests and the OpenAPI drift check look at.
    public func router() -> Hummingbird.Router<BasicRequestContext> {
        let service: @Sendable () -> ConfigurationService = { [live, store] in ConfigurationService(settings: live.value, store: store) }
        let limit = settings.api.maxBodyBytes
        let router = Hummingbird.Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorMiddleware(logger: logger))
        let metricsAuth = settings.api.metricsAuth
        router.add(middleware: BearerAuthMiddleware(tokens: tokens) { path in
            path == "/v1" || path.hasPrefix("/v1/") || (metricsAuth && path.hasPrefix("/metrics"))
        })
        router.get("openapi.json") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_json)))
        }
        router.get("metrics") { [metrics] _, _ in
            let text = await metrics?() ?? []
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: text)))
        }
        let v1 = router.group("v1")
        ConfigurationsAPI(service: service, bodyLimit: limit).register(on: v1)
        RoutesAPI(service: service, bodyLimit: limit).register(on: v1)
        MessagesAPI(queue: { service().queue }, bodyLimit: limit).register(on: v1)
        return router
    }

    public func run() async throws {
        let address: BindAddress
        switch settings.api.listen {
        case .off: return
        case .tcp(let host, let port):
            if !Self.isLoopback(host) {
                logger.warning(
                    "api listens beyond loopback: it speaks plain HTTP and holds every tenant's SMTP settings; put it on 127.0.0.1 or a unix socket behind the platform's proxy",
                    metadata: [LogKey.listen: "\(settings.api.listen)"])
            }
            address = .hostname(host, port: port)
        case .unix(let path):
            try Self.removeStaleSocket(path)
            address = .unixDomainSocket(path: path)
        }
        let listen = settings.api.listen
        let app = Application(
            router: router(),
            // A client that opens a connection and says nothing (or stops halfway) is dropped
            // after a minute rather than holding a descriptor for ever.
            server: .http1(configuration: .init(idleTimeout: .seconds(60))),
            configuration: .init(address: address, serverName: nil),
            onServerRunning: { [logger] channel in
                if case .unix(let path) = listen, chmod(path, 0o660) != 0 {
                    // The platform's proxy reaches the socket through the group (SPEC §9); a
                    // socket left at the umask's mode is one it cannot reach, or others can.
                    logger.error("api socket mode cannot be set to 0660", metadata: ["path": "\(path)", LogKey.error: "\(String(cString: strerror(errno)))"])
                }
                let bound = channel.localAddress.map { "\($0.ipAddress ?? $0.pathname ?? "?"):\($0.port ?? 0)" } ?? "\(listen)"
                logger.info("api listening", metadata: [LogKey.listen: "\(listen)", "address": "\(bound)"])
            },
            logger: Self.quiet(logger))
        try await app.run()
    }

    /// A socket file left by a daemon that was killed would make the bind fail; anything
    /// else at that path is not ours to remove, and neither is a socket something answers on.
    static func removeStaleSocket(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw ConfigFileError("[api] listen: \(path) exists and is not a socket")
        }
        if isListening(path) { throw ConfigFileError("[api] listen: another process (a second mailrouted?) listens on \(path)") }
        unlink(path)
    }

    private static func isListening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0
    }

    static func isLoopback(_ host: String) -> Bool {
        guard let address = IPAddress(host) else { return host == "localhost" }
        return [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!].contains { $0.contains(address) }
    }

    /// Hummingbird logs each request at debug and its own startup at info; the daemon's own
    /// "api listening" line says what an operator needs, once.
    static func quiet(_ logger: Logger) -> Logger {
        var logger = logger
        logger.logLevel = max(logger.logLevel, .notice)
        return logger
    }
}
