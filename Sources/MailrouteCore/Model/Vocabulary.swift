/// The closed vocabularies of SPEC §2–§4. Their raw values are what the database and
/// `--json` output hold, so they never change once shipped.

public enum SMTPSecurity: String, Sendable, Codable, CaseIterable {
    /// Plain connect, then STARTTLS is required.
    case starttls
    /// TLS from the first byte (smtps, usually port 465).
    case tls
    case none
}

public enum FallbackPolicy: String, Sendable, Codable, CaseIterable {
    case platform, none
}

public enum DKIMMode: String, Sendable, Codable, CaseIterable {
    /// The platform signs with its keys directory.
    case platform
    /// The tenant's server signs; the platform adds no signature.
    case server
}

public enum ConfigStatus: String, Sendable, Codable, CaseIterable {
    case notVerified = "not_verified"
    case verified
    case error
}

/// Why a configuration failed, as `verify` and the daemon record it (SPEC §2).
public enum ConfigErrorKind: String, Sendable, Codable, CaseIterable {
    case connectionFailed = "connection_failed"
    case authFailed = "auth_failed"
    case tlsFailed = "tls_failed"
    case fromRejected = "from_rejected"
    case recipientRejected = "recipient_rejected"
    case unknown

    public var suggestedAction: String? {
        switch self {
        case .connectionFailed: "check host and port, and that the server is reachable"
        case .authFailed: "check the credentials with the provider"
        case .tlsFailed: "check the security mode and port"
        case .fromRejected: "make sure the from address may send through this server"
        case .recipientRejected: "try another recipient"
        case .unknown: nil
        }
    }

    /// The suggestion for this failure's own text: an untrusted certificate is usually a
    /// private CA, which `--ca-file` fixes, not a wrong security mode.
    public func suggestedAction(for text: String?) -> String? {
        if self == .tlsFailed, let text, text.lowercased().contains("certificate") {
            return "the server's certificate is not trusted here: if a private CA signed it, give that CA's PEM file with "
                + "`mailroutectl config edit TENANT/NAME --ca-file FILE`; otherwise check the host name, security mode and port"
        }
        return suggestedAction
    }
}

public enum RouteKind: String, Sendable, Codable, CaseIterable {
    case advertiser, cname, category
}

/// The routing step recorded with each message.
public enum RouteStep: String, Sendable, Codable, CaseIterable {
    case advertiser, cname, category
    case `default`
    case platform
    case fallback
}

public enum MessageStatus: String, Sendable, Codable, CaseIterable {
    case queued, sending, sent, deferred, failed, expired, cancelled
}

public enum AttemptOutcome: String, Sendable, Codable, CaseIterable {
    case sent, deferred, failed, fallback
}
