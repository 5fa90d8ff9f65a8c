import Foundation

/// The JSON shapes of `mailroutectl --json` and of the HTTP API (SPEC §9): one set, so the
/// two never differ. Encoded with snake_case keys (`JSONEncoder.mailroute`).


/// `--json` shows every field of a view, `null` where nothing is set, so a script sees the
/// same keys every time (synthesized Encodable would leave nil fields out).
@propertyWrapper public struct Nullable<Value: Encodable>: Encodable {
    public var wrappedValue: Value?

    public init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

extension Nullable: Sendable where Value: Sendable {}

extension JSONEncoder {
    /// `--json`'s and the API's encoder: snake_case keys, sorted, slashes as they are.
    public static func mailroute(pretty: Bool = true) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return encoder
    }
}

/// The queue keeps lists and objects as JSON text; `--json` gives them back as JSON values.
/// A value an UPDATE made unreadable is shown as it is, inside the expected shape.
public enum StoredJSON {
    public static func list(_ text: String?) -> [String]? {
        guard let text else { return nil }
        return (try? JSONDecoder().decode([String].self, from: Data(text.utf8))) ?? [text]
    }

    public static func object(_ text: String?) -> [String: String]? {
        guard let text else { return nil }
        return (try? JSONDecoder().decode([String: String].self, from: Data(text.utf8))) ?? ["": text]
    }
}

/// What `--json` prints for a configuration: every field but the password, which is only
/// ever said to be set or not.
public struct ConfigView: Encodable, Sendable {
    public var tenant: String
    public var name: String
    public var host: String
    public var port: Int
    public var security: String
    @Nullable public var username: String?
    public var hasPassword: Bool
    public var fromAddress: String
    @Nullable public var fromName: String?
    @Nullable public var replyTo: String?
    public var enabled: Bool
    public var isDefault: Bool
    public var fallback: String
    public var dkim: String
    /// The keys that would sign this configuration's mail (`config show` only).
    @Nullable public var dkimKeys: [String]?
    public var authorizedDomains: [String]
    public var authorizedSenders: [String]
    public var blockUnauthorized: Bool
    public var priority: Int
    public var maxConnections: Int
    @Nullable public var ratePerMinute: Int?
    @Nullable public var caFile: String?
    public var status: String
    @Nullable public var errorKind: String?
    @Nullable public var errorText: String?
    @Nullable public var suggestedAction: String?
    @Nullable public var statusChangedAt: Double?

    public init(_ r: SMTPConfigRecord, defaultMaxConnections: Int) {
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

public struct RouteView: Encodable, Sendable {
    public var tenant: String
    public var kind: String
    public var key: String
    public var config: String

    public init(tenant: String, kind: String, key: String, config: String) {
        self.tenant = tenant
        self.kind = kind
        self.key = key
        self.config = config
    }
}

public struct ResolutionView: Encodable, Sendable {
    @Nullable public var tenant: String?
    public var route: String
    @Nullable public var config: String?
    @Nullable public var server: String?
    @Nullable public var fromAddress: String?
    @Nullable public var authorizedDomains: [String]?
    @Nullable public var authorizedSenders: [String]?
    public var trail: [String]

    /// What a message with `keys` would use: its configuration, or the platform relay.
    public init(_ resolution: RouteResolution, keys: RoutingKeys, platform: MailrouteConfiguration.Platform) {
        let config = resolution.config
        tenant = keys.tenant
        route = resolution.step.rawValue
        self.config = config?.label
        server = config.map { "\($0.host):\($0.port)" } ?? "\(platform.host):\(platform.port)"
        fromAddress = config?.fromAddress ?? platform.fromAddress
        authorizedDomains = config?.authorizedDomainList
        authorizedSenders = config?.authorizedSenderList
        trail = resolution.trail
    }
}

public struct VerificationView: Encodable, Sendable {
    public var config: String
    public var server: String
    public var ok: Bool
    @Nullable public var errorKind: String?
    @Nullable public var smtpCode: Int?
    @Nullable public var enhancedCode: String?
    /// What went wrong, from the server or from libcurl.
    @Nullable public var errorText: String?
    /// The server's own reply, when it gave one.
    @Nullable public var serverText: String?
    @Nullable public var temporary: Bool?
    @Nullable public var suggestedAction: String?
    @Nullable public var finalReply: String?
    /// For `test`: the keys that signed the test message.
    @Nullable public var dkimKeys: [String]?

    public init(_ result: VerificationResult) {
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

public struct MessageView: Encodable, Sendable {
    public var id: Int64
    public var status: String
    @Nullable public var tenant: String?
    @Nullable public var advertiser: String?
    @Nullable public var cname: String?
    public var category: String
    @Nullable public var priority: Int?
    public var rcptTo: [String]
    @Nullable public var cc: [String]?
    @Nullable public var bcc: [String]?
    @Nullable public var mailFrom: String?
    @Nullable public var fromName: String?
    @Nullable public var replyTo: String?
    public var subject: String
    @Nullable public var headers: [String: String]?
    @Nullable public var idempotencyKey: String?
    @Nullable public var route: String?
    /// The configuration the message is for (`tenant/name`): beside `route` `fallback`, whose
    /// server it went around. nil for platform mail, before routing, and once that
    /// configuration is deleted (its attempts keep the name).
    @Nullable public var config: String?
    public var attempts: Int
    @Nullable public var sendAt: Double?
    @Nullable public var nextAttemptAt: Double?
    @Nullable public var expiresAt: Double?
    @Nullable public var lastErrorKind: String?
    @Nullable public var lastError: String?
    @Nullable public var smtpResponse: String?
    @Nullable public var messageIdHeader: String?
    @Nullable public var createdAt: Double?
    @Nullable public var sentAt: Double?
    /// `queue show` only.
    @Nullable public var attemptLog: [AttemptView]?
    @Nullable public var attachments: [AttachmentView]?

    public init(_ m: MessageRecord) {
        id = m.id ?? 0
        status = m.status.rawValue
        tenant = m.tenant
        advertiser = m.advertiser
        cname = m.cname
        category = m.category
        priority = m.priority
        rcptTo = StoredJSON.list(m.rcptTo) ?? []
        cc = StoredJSON.list(m.cc)
        bcc = StoredJSON.list(m.bcc)
        mailFrom = m.mailFrom
        fromName = m.fromName
        replyTo = m.replyTo
        subject = m.subject
        headers = StoredJSON.object(m.headers)
        idempotencyKey = m.idempotencyKey
        route = m.route?.rawValue
        attempts = m.attempts
        sendAt = m.sendAt
        nextAttemptAt = m.nextAttemptAt
        expiresAt = m.expiresAt
        lastErrorKind = m.lastErrorKind
        lastError = m.lastError
        smtpResponse = m.smtpResponse
        messageIdHeader = m.messageIdHeader
        createdAt = m.createdAt
        sentAt = m.sentAt
    }
}

public struct AttachmentView: Encodable, Sendable {
    public var filename: String
    public var contentType: String
    public var size: Int

    public init(_ a: AttachmentRecord) {
        filename = a.filename
        contentType = a.contentType
        size = a.content.count
    }
}

public struct AttemptView: Encodable, Sendable {
    public var attempt: Int
    public var at: Double
    @Nullable public var config: String?
    @Nullable public var route: String?
    @Nullable public var server: String?
    public var outcome: String
    @Nullable public var errorKind: String?
    @Nullable public var smtpCode: Int?
    @Nullable public var enhancedCode: String?
    @Nullable public var response: String?
    @Nullable public var refusedRecipients: [RefusedRecipient]?
    @Nullable public var durationS: Double?

    public init(_ a: AttemptRecord) {
        attempt = a.attempt
        at = a.at
        config = a.configLabel
        route = a.route?.rawValue
        server = a.server
        outcome = a.outcome.rawValue
        errorKind = a.errorKind
        smtpCode = a.smtpCode
        enhancedCode = a.enhancedCode
        response = a.response
        refusedRecipients = a.refusedRecipients.flatMap { try? JSONDecoder().decode([RefusedRecipient].self, from: Data($0.utf8)) }
        durationS = a.durationS
    }
}

/// What the daemon would sign this configuration's mail with, read from the keys directory
/// as the daemon reads it.
public struct DKIMSummary {
    public var text: String
    /// `domain/selector (algorithm)` of each key that signs.
    public var keys: [String]

    public init(_ r: SMTPConfigRecord, keysDirectory: String) {
        let domain = r.fromAddress.split(separator: "@").last.map { $0.lowercased() } ?? ""
        guard r.dkim == .platform else {
            (text, keys) = ("the tenant's server signs; the platform adds no signature", [])
            return
        }
        let keyring = DKIMKeyring.load(directory: keysDirectory)
        keys = keyring.signingKeys(forSender: r.fromAddress, mode: r.dkim).map(\.label)
        if !keys.isEmpty {
            text = "signed as " + keys.joined(separator: ", ")
        } else if keyring.entries.contains(where: { $0.key == nil }) {
            text = "no usable key for \(domain) in \(keysDirectory) (see `mailroutectl dkim list`): unsigned"
        } else {
            text = "no key for \(domain) in \(keysDirectory): unsigned (`mailroutectl dkim generate --domain \(domain) ...`)"
        }
    }
}
