import Foundation
import GRDB

public struct SMTPConfigRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "smtp_configs"
    public static var databaseColumnDecodingStrategy: DatabaseColumnDecodingStrategy { .convertFromSnakeCase }
    public static var databaseColumnEncodingStrategy: DatabaseColumnEncodingStrategy { .convertToSnakeCase }

    public var id: Int64?
    public var tenant: String
    public var name: String
    public var host: String
    public var port: Int = 587
    public var security: SMTPSecurity = .starttls
    public var username: String?
    /// AES-GCM sealed password; see `SecretBox`.
    public var passwordSealed: Data?
    public var fromAddress: String
    public var fromName: String?
    public var replyTo: String?
    public var enabled = true
    public var isDefault = false
    public var fallback: FallbackPolicy = .platform
    public var dkim: DKIMMode = .platform
    /// `;`-separated, as the operator typed them; see `authorizedDomainList`.
    public var authorizedDomains = ""
    public var authorizedSenders = ""
    public var blockUnauthorized = false
    public var priority = 3
    /// nil: `[delivery] default_max_connections`.
    public var maxConnections: Int?
    public var ratePerMinute: Int?
    public var caFile: String?
    public var status: ConfigStatus = .notVerified
    public var errorKind: ConfigErrorKind?
    public var errorText: String?
    public var statusChangedAt: Double?
    public var settingsVersion = 1
    /// Failed probes since the configuration went down; the next waits `cooldown_s` × 2^n, up to an hour.
    public var probeFailures = 0
    /// When the next probe of a configuration that is down may run.
    public var nextProbeAt: Double?
    public var createdAt: Double = 0
    public var updatedAt: Double = 0

    public init(tenant: String, name: String, host: String, fromAddress: String) {
        self.tenant = tenant
        self.name = name
        self.host = host
        self.fromAddress = fromAddress
    }

    public enum Columns {
        public static let id = Column("id")
        public static let tenant = Column("tenant")
        public static let name = Column("name")
        public static let isDefault = Column("is_default")
        public static let enabled = Column("enabled")
        public static let passwordSealed = Column("password_sealed")
        public static let status = Column("status")
        public static let settingsVersion = Column("settings_version")
    }

    /// `tenant/name`, how operators name a configuration.
    public var label: String { "\(tenant)/\(name)" }

    public var hasPassword: Bool { passwordSealed != nil }

    public var authorizedDomainList: [String] { Self.splitList(authorizedDomains) }
    public var authorizedSenderList: [String] { Self.splitList(authorizedSenders) }

    static func splitList(_ text: String) -> [String] {
        text.split(separator: ";").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

public struct RouteRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "routes"
    public static var databaseColumnDecodingStrategy: DatabaseColumnDecodingStrategy { .convertFromSnakeCase }
    public static var databaseColumnEncodingStrategy: DatabaseColumnEncodingStrategy { .convertToSnakeCase }

    public var id: Int64?
    public var tenant: String
    public var kind: RouteKind
    public var key: String
    public var configId: Int64
    public var createdAt: Double

    public enum Columns {
        public static let tenant = Column("tenant")
        public static let kind = Column("kind")
        public static let key = Column("key")
        public static let configId = Column("config_id")
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

/// One outbound message. Enqueuers write the first group of columns; the daemon owns the rest.
public struct MessageRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "messages"
    public static var databaseColumnDecodingStrategy: DatabaseColumnDecodingStrategy { .convertFromSnakeCase }
    public static var databaseColumnEncodingStrategy: DatabaseColumnEncodingStrategy { .convertToSnakeCase }

    public var id: Int64?
    public var tenant: String?
    public var advertiser: String?
    public var cname: String?
    public var category: String
    public var priority: Int?
    public var sendAt: Double?
    public var expiresAt: Double?
    public var mailFrom: String?
    public var fromName: String?
    public var replyTo: String?
    /// JSON arrays of addresses.
    public var rcptTo: String
    public var cc: String?
    public var bcc: String?
    public var subject: String
    public var textBody: String?
    public var htmlBody: String?
    /// JSON object of extra headers.
    public var headers: String?
    public var idempotencyKey: String?

    public var status: MessageStatus = .queued
    public var attempts = 0
    public var nextAttemptAt: Double?
    public var leaseUntil: Double?
    public var configId: Int64?
    public var route: RouteStep?
    public var lastErrorKind: String?
    public var lastError: String?
    public var smtpResponse: String?
    public var messageIdHeader: String?
    public var createdAt: Double?
    public var sentAt: Double?
    /// Set when the daemon admits the row; claiming orders by it.
    public var effectivePriority: Int?

    public init(category: String, rcptTo: String, subject: String) {
        self.category = category
        self.rcptTo = rcptTo
        self.subject = subject
    }

    public enum Columns {
        public static let id = Column("id")
        public static let tenant = Column("tenant")
        public static let status = Column("status")
        public static let priority = Column("priority")
        public static let nextAttemptAt = Column("next_attempt_at")
        public static let leaseUntil = Column("lease_until")
        public static let createdAt = Column("created_at")
        public static let sentAt = Column("sent_at")
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

public struct AttachmentRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "attachments"
    public static var databaseColumnDecodingStrategy: DatabaseColumnDecodingStrategy { .convertFromSnakeCase }
    public static var databaseColumnEncodingStrategy: DatabaseColumnEncodingStrategy { .convertToSnakeCase }

    public var id: Int64?
    public var messageId: Int64
    public var filename: String
    public var contentType: String
    public var content: Data

    public enum Columns {
        public static let messageId = Column("message_id")
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

/// One delivery try: the message's delivery log.
public struct AttemptRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "attempts"
    public static var databaseColumnDecodingStrategy: DatabaseColumnDecodingStrategy { .convertFromSnakeCase }
    public static var databaseColumnEncodingStrategy: DatabaseColumnEncodingStrategy { .convertToSnakeCase }

    public var id: Int64?
    public var messageId: Int64
    public var attempt: Int
    public var at: Double
    public var configId: Int64?
    public var configLabel: String?
    public var route: RouteStep?
    /// `host:port`.
    public var server: String?
    public var outcome: AttemptOutcome
    public var errorKind: String?
    public var smtpCode: Int?
    public var enhancedCode: String?
    public var response: String?
    /// JSON array of `{"address": …, "reply": …}` for recipients the server refused.
    public var refusedRecipients: String?
    public var durationS: Double?

    public enum Columns {
        public static let messageId = Column("message_id")
        public static let attempt = Column("attempt")
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}
