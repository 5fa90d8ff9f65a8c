import Foundation
import MailrouteCore

/// `--json` shows every field of a view, `null` where nothing is set, so a script sees the
/// same keys every time (synthesized Encodable would leave nil fields out).
@propertyWrapper struct Nullable<Value: Encodable>: Encodable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

/// The queue keeps lists and objects as JSON text; `--json` gives them back as JSON values.
/// A value an UPDATE made unreadable is shown as it is, inside the expected shape.
enum StoredJSON {
    static func list(_ text: String?) -> [String]? {
        guard let text else { return nil }
        return (try? JSONDecoder().decode([String].self, from: Data(text.utf8))) ?? [text]
    }

    static func object(_ text: String?) -> [String: String]? {
        guard let text else { return nil }
        return (try? JSONDecoder().decode([String: String].self, from: Data(text.utf8))) ?? ["": text]
    }
}

/// What `--json` prints for a configuration: every field but the password, which is only
/// ever said to be set or not.
struct ConfigView: Encodable {
    var tenant: String
    var name: String
    var host: String
    var port: Int
    var security: String
    @Nullable var username: String?
    var hasPassword: Bool
    var fromAddress: String
    @Nullable var fromName: String?
    @Nullable var replyTo: String?
    var enabled: Bool
    var isDefault: Bool
    var fallback: String
    var dkim: String
    /// The keys that would sign this configuration's mail (`config show` only).
    @Nullable var dkimKeys: [String]?
    var authorizedDomains: [String]
    var authorizedSenders: [String]
    var blockUnauthorized: Bool
    var priority: Int
    var maxConnections: Int
    @Nullable var ratePerMinute: Int?
    @Nullable var caFile: String?
    var status: String
    @Nullable var errorKind: String?
    @Nullable var errorText: String?
    @Nullable var suggestedAction: String?
    @Nullable var statusChangedAt: Double?

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
        suggestedAction = r.errorKind?.suggestedAction(for: r.errorText)
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
    @Nullable var tenant: String?
    var route: String
    @Nullable var config: String?
    @Nullable var server: String?
    @Nullable var fromAddress: String?
    @Nullable var authorizedDomains: [String]?
    @Nullable var authorizedSenders: [String]?
    var trail: [String]
}

struct VerificationView: Encodable {
    var config: String
    var server: String
    var ok: Bool
    @Nullable var errorKind: String?
    @Nullable var smtpCode: Int?
    @Nullable var enhancedCode: String?
    /// What went wrong, from the server or from libcurl.
    @Nullable var errorText: String?
    /// The server's own reply, when it gave one.
    @Nullable var serverText: String?
    @Nullable var temporary: Bool?
    @Nullable var suggestedAction: String?
    @Nullable var finalReply: String?
    /// For `test`: the keys that signed the test message.
    @Nullable var dkimKeys: [String]?

    init(_ result: VerificationResult) {
        config = result.config
        server = result.server
        ok = result.succeeded
        finalReply = result.finalReply
        dkimKeys = result.finalReply == nil ? nil : result.signedWith
        if let error = result.error {
            errorKind = error.configErrorKind.rawValue
            smtpCode = error.smtpCode
            enhancedCode = error.enhancedCode
            errorText = error.text
            serverText = error.textIsServerReply ? error.text : nil
            temporary = error.isTemporary
            suggestedAction = error.configErrorKind.suggestedAction(for: error.text)
        }
    }
}
