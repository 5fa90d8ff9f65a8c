/// Why a delivery or verification did not succeed, as maddy models it: what kind of
/// failure, the server's code, enhanced code and text, and whether trying later may help.
public struct DeliveryError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, CaseIterable {
        // Configuration-level (SPEC §2's verification kinds).
        case connectionFailed = "connection_failed"
        case authFailed = "auth_failed"
        case tlsFailed = "tls_failed"
        case fromRejected = "from_rejected"
        case recipientRejected = "recipient_rejected"
        // Message-level.
        case messageRejected = "message_rejected"
        case temporaryFailure = "temporary_failure"
        case timeout
        /// Silence while connecting or before the greeting: a dead server or a busy host,
        /// so it defers, and trips the configuration only after `breaker_timeouts` in a row.
        case connectTimeout = "connect_timeout"
        case connectionLost = "connection_lost"
        case invalidMessage = "invalid_message"
        case senderUnauthorized = "sender_unauthorized"
        case unknown
    }

    public var kind: Kind
    /// The server's reply code, when the failure was a reply.
    public var smtpCode: Int?
    /// RFC 3463 enhanced status code (`5.7.8`), when the server gave one.
    public var enhancedCode: String?
    /// The server's reply line, or libcurl's message when the server said nothing.
    public var text: String
    public var isTemporary: Bool

    public init(kind: Kind, smtpCode: Int? = nil, enhancedCode: String? = nil, text: String, isTemporary: Bool) {
        self.kind = kind
        self.smtpCode = smtpCode
        self.enhancedCode = enhancedCode
        self.text = text
        self.isTemporary = isTemporary
    }

    /// Whether `text` is the server's own reply; otherwise it is libcurl's account of what
    /// went wrong (a refused connection, a certificate), and must not be shown as the server's.
    public var textIsServerReply: Bool { smtpCode != nil }

    /// The kind a configuration's status records for this failure.
    public var configErrorKind: ConfigErrorKind {
        switch kind {
        case .connectionFailed, .connectTimeout: .connectionFailed
        case .authFailed: .authFailed
        case .tlsFailed: .tlsFailed
        case .fromRejected: .fromRejected
        case .recipientRejected: .recipientRejected
        default: .unknown
        }
    }

    /// A failure that says the configuration, not the message, is broken (SPEC §4: the
    /// configuration goes to `error` and the message to fallback).
    public var isConfigurationLevel: Bool {
        guard !isTemporary else { return false }
        switch kind {
        case .connectionFailed, .authFailed, .tlsFailed, .fromRejected: return true
        default: return false
        }
    }

    public var description: String {
        "\(kind.rawValue)\(isTemporary ? " (temporary)" : ""): \(text)"
    }
}
