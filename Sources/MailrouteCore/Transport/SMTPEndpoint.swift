/// Where and how to connect and log in: everything a connection needs, and the identity
/// a pool compares to know that a configuration's connection settings changed.
public struct SMTPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var security: SMTPSecurity
    public var username: String?
    /// Clear text only in memory, only for libcurl; `description` never shows it.
    public var password: String?
    /// PEM bundle that replaces the system CAs, for private CAs.
    public var caFile: String?
    public var heloName: String
    public var connectTimeoutSeconds: Double
    public var commandTimeoutSeconds: Double
    /// An idle pooled connection older than this is not reused.
    public var maxIdleSeconds: Double
    /// Where a tenant's server may be, checked on every address it resolves to as the socket
    /// is opened; nil for the platform relay, which is the operator's own.
    public var networkPolicy: NetworkPolicy?

    public init(
        host: String, port: Int, security: SMTPSecurity, username: String? = nil, password: String? = nil,
        caFile: String? = nil, heloName: String = "localhost", connectTimeoutSeconds: Double = 15,
        commandTimeoutSeconds: Double = 60, maxIdleSeconds: Double = 60
    ) {
        self.host = host
        self.port = port
        self.security = security
        self.username = username.flatMap { $0.isEmpty ? nil : $0 }
        self.password = password
        self.caFile = caFile.flatMap { $0.isEmpty ? nil : $0 }
        self.heloName = heloName
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.commandTimeoutSeconds = commandTimeoutSeconds
        self.maxIdleSeconds = maxIdleSeconds
    }

    /// The endpoint of a tenant's configuration, with the timeouts of `[delivery]`.
    public init(config: SMTPConfigRecord, password: String?, delivery: MailrouteConfiguration.Delivery) {
        self.init(
            host: config.host, port: config.port, security: config.security, username: config.username, password: password,
            caFile: config.caFile, heloName: delivery.effectiveHeloName, connectTimeoutSeconds: delivery.connectTimeoutSeconds,
            commandTimeoutSeconds: delivery.commandTimeoutSeconds, maxIdleSeconds: delivery.idleTimeoutSeconds)
        networkPolicy = delivery.networkPolicy
    }

    /// `host:port`, as logs and the attempts table show it.
    public var server: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The URL libcurl connects to; its path is the EHLO name.
    var url: String {
        let scheme = security == .tls ? "smtps" : "smtp"
        return "\(scheme)://\(server)/\(heloName)"
    }

    public var description: String {
        "\(security.rawValue)://\(server)\(username.map { " as \($0)" } ?? "")"
    }
}
