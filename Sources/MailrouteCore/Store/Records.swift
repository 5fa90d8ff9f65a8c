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
    /// Not a column: why the row's TEXT cannot be read as text (a NUL byte, or bytes that are
    /// not UTF-8, which SQLite stores as given). Such a row fails `invalid_message` with this
    /// reason instead of being sent cut short or with U+FFFD in it.
    public var textDefect: String?

    /// Every stored property but `textDefect`, which is never written to the database.
    enum CodingKeys: String, CodingKey {
        case id, tenant, advertiser, cname, category, priority, sendAt, expiresAt, mailFrom, fromName, replyTo, rcptTo, cc, bcc
        case subject, textBody, htmlBody, headers, idempotencyKey, status, attempts, nextAttemptAt, leaseUntil, configId, route
        case lastErrorKind, lastError, smtpResponse, messageIdHeader, createdAt, sentAt, effectivePriority
    }

    public init(category: String, rcptTo: String, subject: String) {
        self.category = category
        self.rcptTo = rcptTo
        self.subject = subject
    }

    public enum Columns {
        public static let id = Column("id")
        public static let tenant = Column("tenant")
        public static let advertiser = Column("advertiser")
        public static let cname = Column("cname")
        public static let category = Column("category")
        public static let priority = Column("priority")
        public static let sendAt = Column("send_at")
        public static let expiresAt = Column("expires_at")
        public static let mailFrom = Column("mail_from")
        public static let fromName = Column("from_name")
        public static let replyTo = Column("reply_to")
        public static let rcptTo = Column("rcpt_to")
        public static let cc = Column("cc")
        public static let bcc = Column("bcc")
        public static let subject = Column("subject")
        public static let textBody = Column("text_body")
        public static let htmlBody = Column("html_body")
        public static let headers = Column("headers")
        public static let idempotencyKey = Column("idempotency_key")
        public static let status = Column("status")
        public static let attempts = Column("attempts")
        public static let nextAttemptAt = Column("next_attempt_at")
        public static let leaseUntil = Column("lease_until")
        public static let configId = Column("config_id")
        public static let route = Column("route")
        public static let lastErrorKind = Column("last_error_kind")
        public static let lastError = Column("last_error")
        public static let smtpResponse = Column("smtp_response")
        public static let messageIdHeader = Column("message_id_header")
        public static let createdAt = Column("created_at")
        public static let sentAt = Column("sent_at")
        public static let effectivePriority = Column("effective_priority")
    }

    /// Every column, in the table's order: requests select exactly these, so `init(row:)`
    /// can read by position.
    public static var databaseSelection: [any SQLSelectable] { selection }
    private nonisolated(unsafe) static let selection: [any SQLSelectable] = [
        Columns.id, Columns.tenant, Columns.advertiser, Columns.cname, Columns.category, Columns.priority,
        Columns.sendAt, Columns.expiresAt, Columns.mailFrom, Columns.fromName, Columns.replyTo, Columns.rcptTo,
        Columns.cc, Columns.bcc, Columns.subject, Columns.textBody, Columns.htmlBody, Columns.headers,
        Columns.idempotencyKey, Columns.status, Columns.attempts, Columns.nextAttemptAt, Columns.leaseUntil,
        Columns.configId, Columns.route, Columns.lastErrorKind, Columns.lastError, Columns.smtpResponse,
        Columns.messageIdHeader, Columns.createdAt, Columns.sentAt, Columns.effectivePriority,
    ]

    /// By hand rather than through Codable, and by position when the row has exactly the
    /// selection's columns: every claimed row is decoded here, and looking columns up by name
    /// (case-insensitively) cost more than the rest of the decoding (perf).
    public init(row: Row) throws {
        if row.count == Self.selection.count, row.columnNames.first == "id", row.columnNames.last == "effective_priority" {
            self.init(positional: row)
        } else {
            self.init(named: row)
        }
    }

    private init(named row: Row) {
        typealias C = Columns
        id = row[C.id]
        tenant = row[C.tenant]
        advertiser = row[C.advertiser]
        cname = row[C.cname]
        category = row[C.category]
        priority = row[C.priority]
        sendAt = row[C.sendAt]
        expiresAt = row[C.expiresAt]
        mailFrom = row[C.mailFrom]
        fromName = row[C.fromName]
        replyTo = row[C.replyTo]
        rcptTo = row[C.rcptTo]
        cc = row[C.cc]
        bcc = row[C.bcc]
        subject = row[C.subject]
        textBody = row[C.textBody]
        htmlBody = row[C.htmlBody]
        headers = row[C.headers]
        idempotencyKey = row[C.idempotencyKey]
        status = MessageStatus(rawValue: row[C.status] ?? "") ?? .queued
        attempts = row[C.attempts] ?? 0
        nextAttemptAt = row[C.nextAttemptAt]
        leaseUntil = row[C.leaseUntil]
        configId = row[C.configId]
        route = (row[C.route] as String?).flatMap(RouteStep.init(rawValue:))
        lastErrorKind = row[C.lastErrorKind]
        lastError = row[C.lastError]
        smtpResponse = row[C.smtpResponse]
        messageIdHeader = row[C.messageIdHeader]
        createdAt = row[C.createdAt]
        sentAt = row[C.sentAt]
        effectivePriority = row[C.effectivePriority]
    }

    private init(positional row: Row) {
        var defect: String?
        id = row[0]
        tenant = sqliteText(row, 1, "tenant", &defect)
        advertiser = sqliteText(row, 2, "advertiser", &defect)
        cname = sqliteText(row, 3, "cname", &defect)
        category = sqliteText(row, 4, "category", &defect) ?? ""
        priority = row[5]
        sendAt = row[6]
        expiresAt = row[7]
        mailFrom = sqliteText(row, 8, "mail_from", &defect)
        fromName = sqliteText(row, 9, "from_name", &defect)
        replyTo = sqliteText(row, 10, "reply_to", &defect)
        rcptTo = sqliteText(row, 11, "rcpt_to", &defect) ?? ""
        cc = sqliteText(row, 12, "cc", &defect)
        bcc = sqliteText(row, 13, "bcc", &defect)
        subject = sqliteText(row, 14, "subject", &defect) ?? ""
        textBody = sqliteText(row, 15, "text_body", &defect)
        htmlBody = sqliteText(row, 16, "html_body", &defect)
        headers = sqliteText(row, 17, "headers", &defect)
        idempotencyKey = sqliteText(row, 18, "idempotency_key", &defect)
        textDefect = defect
        status = MessageStatus(rawValue: row[19] ?? "") ?? .queued
        attempts = row[20] ?? 0
        nextAttemptAt = row[21]
        leaseUntil = row[22]
        configId = row[23]
        route = (row[24] as String?).flatMap(RouteStep.init(rawValue:))
        lastErrorKind = row[25]
        lastError = row[26]
        smtpResponse = row[27]
        messageIdHeader = row[28]
        createdAt = row[29]
        sentAt = row[30]
        effectivePriority = row[31]
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
    /// Not a column: as `MessageRecord.textDefect`, for the file name and content type.
    public var textDefect: String?

    enum CodingKeys: String, CodingKey {
        case id, messageId, filename, contentType, content
    }

    public init(id: Int64? = nil, messageId: Int64, filename: String, contentType: String, content: Data) {
        self.id = id
        self.messageId = messageId
        self.filename = filename
        self.contentType = contentType
        self.content = content
    }

    /// By hand, for the TEXT columns' bytes (`sqliteText`): a NUL in a file name passed the
    /// CHECK (SQLite's length() stops at it) and the name was cut there.
    public init(row: Row) throws {
        var defect: String?
        let names = Array(row.columnNames).map { $0.lowercased() }
        id = row["id"]
        messageId = row["message_id"]
        filename = names.firstIndex(of: "filename").flatMap { sqliteText(row, $0, "filename", &defect) } ?? ""
        contentType = names.firstIndex(of: "content_type").flatMap { sqliteText(row, $0, "content_type", &defect) } ?? ""
        content = row["content"] ?? Data()
        textDefect = defect
    }

    public enum Columns {
        public static let messageId = Column("message_id")
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }
}

/// One delivery try: the message's delivery log.
/// Read through GRDB; written only by the delivery path, through `insertSQL`.
public struct AttemptRecord: Codable, Sendable, Equatable, FetchableRecord, TableRecord {
    public static let databaseTableName = "attempts"
    public static var databaseColumnDecodingStrategy: DatabaseColumnDecodingStrategy { .convertFromSnakeCase }

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
        public static let id = Column("id")
        public static let messageId = Column("message_id")
        public static let attempt = Column("attempt")
        public static let at = Column("at")
        public static let configId = Column("config_id")
        public static let configLabel = Column("config_label")
        public static let route = Column("route")
        public static let server = Column("server")
        public static let outcome = Column("outcome")
        public static let errorKind = Column("error_kind")
        public static let smtpCode = Column("smtp_code")
        public static let enhancedCode = Column("enhanced_code")
        public static let response = Column("response")
        public static let refusedRecipients = Column("refused_recipients")
        public static let durationS = Column("duration_s")
    }

    /// The INSERT of the delivery path, prepared once per connection: GRDB's record insert
    /// builds its SQL for every row, which perf found to be a tenth of the writer's time.
    static let insertSQL = """
        INSERT INTO attempts (message_id, attempt, at, config_id, config_label, route, server, outcome,
                              error_kind, smtp_code, enhanced_code, response, refused_recipients, duration_s)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    var insertArguments: StatementArguments {
        [messageId, attempt, at, configId, configLabel, route?.rawValue, server, outcome.rawValue,
         errorKind, smtpCode, enhancedCode, response, refusedRecipients, durationS]
    }
}

/// An enqueuer's TEXT column as SQLite holds it. GRDB decodes TEXT through
/// `String(cString:)`, which stops at the first NUL and silently repairs bytes that are not
/// UTF-8: a body cut short at a NUL, or a subject with U+FFFD, would be sent as if they were
/// what the row said. The bytes are read instead (without a copy, on the claim's statement);
/// a NUL or invalid UTF-8 becomes the row's `textDefect`. No slower: one scan for NUL and
/// one validation, as `String(cString:)` did.
fileprivate func sqliteText(_ row: Row, _ index: Int, _ column: String, _ defect: inout String?) -> String? {
    var found: String?
    let value = try? row.withUnsafeData(atIndex: index) { data -> String? in
        guard let data else { return nil }
        return data.withUnsafeBytes { raw -> String in
            let bytes = raw.bindMemory(to: UInt8.self)
            guard let base = raw.baseAddress, !bytes.isEmpty else { return "" }
            if let nul = memchr(base, 0, bytes.count) {
                found = "\(column) holds a NUL byte (at byte \(base.distance(to: UnsafeRawPointer(nul))))"
            }
            if let text = String(validating: bytes, as: UTF8.self) { return text }
            if found == nil { found = "\(column) is not valid UTF-8 text" }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
    if defect == nil { defect = found }
    return value ?? row[index]
}
