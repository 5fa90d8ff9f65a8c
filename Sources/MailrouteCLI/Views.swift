import MailrouteCore

/// What `--json` prints for a configuration: every field but the password, which is only
/// ever said to be set or not.
struct ConfigView: Encodable {
    var tenant: String
    var name: String
    var host: String
    var port: Int
    var security: String
    var username: String?
    var hasPassword: Bool
    var fromAddress: String
    var fromName: String?
    var replyTo: String?
    var enabled: Bool
    var isDefault: Bool
    var fallback: String
    var dkim: String
    /// The keys that would sign this configuration's mail (`config show` only).
    var dkimKeys: [String]?
    var authorizedDomains: [String]
    var authorizedSenders: [String]
    var blockUnauthorized: Bool
    var priority: Int
    var maxConnections: Int
    var ratePerMinute: Int?
    var caFile: String?
    var status: String
    var errorKind: String?
    var errorText: String?
    var suggestedAction: String?
    var statusChangedAt: Double?

    init(_ r: SMTPConfigRecord, defaultMaxConnections: Int) {
        tenant = r.tenant
        name = r.name
        host = r.host
        port = r.port
        security = r.security.rawValue
        username = r.username
        hasPassword = r.hasPassword
        fromAddress = r.fromAddress
        fromName = r.fromName
        replyTo = r.replyTo
        enabled = r.enabled
        isDefault = r.isDefault
        fallback = r.fallback.rawValue
        dkim = r.dkim.rawValue
        authorizedDomains = r.authorizedDomainList
        authorizedSenders = r.authorizedSenderList
        blockUnauthorized = r.blockUnauthorized
        priority = r.priority
        maxConnections = r.maxConnections ?? defaultMaxConnections
        ratePerMinute = r.ratePerMinute
        caFile = r.caFile
        status = r.status.rawValue
        errorKind = r.errorKind?.rawValue
        errorText = r.errorText
        suggestedAction = r.errorKind?.suggestedAction
        statusChangedAt = r.statusChangedAt
    }
}

struct RouteView: Encodable {
    var tenant: String
    var kind: String
    var key: String
    var config: String
}

struct ResolutionView: Encodable {
    var tenant: String?
    var route: String
    var config: String?
    var server: String?
    var fromAddress: String?
    var authorizedDomains: [String]?
    var authorizedSenders: [String]?
    var trail: [String]
}

struct VerificationView: Encodable {
    var config: String
    var server: String
    var ok: Bool
    var errorKind: String?
    var smtpCode: Int?
    var enhancedCode: String?
    var serverText: String?
    var temporary: Bool?
    var suggestedAction: String?
    var finalReply: String?

    init(_ result: VerificationResult) {
        config = result.config
        server = result.server
        ok = result.succeeded
        finalReply = result.finalReply
        if let error = result.error {
            errorKind = error.configErrorKind.rawValue
            smtpCode = error.smtpCode
            enhancedCode = error.enhancedCode
            serverText = error.text
            temporary = error.isTemporary
            suggestedAction = error.configErrorKind.suggestedAction
        }
    }
}
