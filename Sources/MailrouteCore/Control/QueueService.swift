import Foundation

/// A message as an enqueuing service hands it over: SPEC §3's columns, lists and objects as
/// values rather than JSON text. `mailroutectl enqueue` builds one from its options,
/// `POST /v1/messages` decodes one from its body (snake_case keys); both go through
/// `QueueService.enqueue`, so the rules are checked once.
public struct MessageSubmission: Sendable, Equatable, Decodable {
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
    public var rcptTo: [String]
    public var cc: [String]?
    public var bcc: [String]?
    public var subject: String
    public var textBody: String?
    public var htmlBody: String?
    public var headers: [String: String]?
    public var idempotencyKey: String?
    public var attachments: [Attachment]?

    public struct Attachment: Sendable, Equatable, Decodable {
        public var filename: String
        /// Guessed from the file name when absent.
        public var contentType: String?
        public var content: Data

        public init(filename: String, contentType: String?, content: Data) {
            self.filename = filename
            self.contentType = contentType
            self.content = content
        }

        enum CodingKeys: String, CodingKey { case filename, contentType, contentBase64 }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            filename = try c.decode(String.self, forKey: .filename)
            contentType = try c.decodeIfPresent(String.self, forKey: .contentType)
            let text = try c.decode(String.self, forKey: .contentBase64)
            guard let data = Data(base64Encoded: text, options: .ignoreUnknownCharacters) else {
                throw DecodingError.dataCorruptedError(forKey: .contentBase64, in: c, debugDescription: "is not base64")
            }
            content = data
        }
    }

    public init(category: String, rcptTo: [String], subject: String) {
        self.category = category
        self.rcptTo = rcptTo
        self.subject = subject
    }

    /// The row and attachments to insert, or the first field that is wrong (named as in
    /// JSON). What SQLite's and PostgreSQL's CHECKs refuse anyway is left to them: their
    /// sentences name the column too.
    func validated() throws -> (MessageRecord, [(filename: String, contentType: String, content: Data)]) {
        if let tenant { _ = try Validate.identifier(tenant, field: "tenant") }
        guard !rcptTo.isEmpty else { throw MailrouteError.invalid(field: "rcpt_to", reason: "needs at least one recipient") }
        for (field, list) in [("rcpt_to", rcptTo), ("cc", cc ?? []), ("bcc", bcc ?? [])] {
            for (index, address) in list.enumerated() { _ = try Validate.address(address, field: "\(field)[\(index)]") }
        }
        if let priority, !(1...5).contains(priority) {
            throw MailrouteError.invalid(field: "priority", reason: "must be 1-5, not \(priority)")
        }
        for (field, time) in [("send_at", sendAt), ("expires_at", expiresAt)] {
            if let time, !time.isFinite { throw MailrouteError.invalid(field: field, reason: "must be Unix seconds") }
        }
        guard textBody != nil || htmlBody != nil else {
            throw MailrouteError.invalid(field: "text_body", reason: "give text_body or html_body (or both)")
        }
        var attachments: [(filename: String, contentType: String, content: Data)] = []
        for (index, a) in (self.attachments ?? []).enumerated() {
            guard (1...255).contains(a.filename.count), !a.filename.unicodeScalars.contains(where: { $0.value < 32 || $0.value == 127 }) else {
                throw MailrouteError.invalid(field: "attachments[\(index)].filename", reason: "must be 1-255 characters without control characters")
            }
            let type = a.contentType ?? MediaType.guess(for: a.filename)
            attachments.append((a.filename, type, a.content))
        }
        var message = MessageRecord(category: category, rcptTo: try Self.json(rcptTo), subject: subject)
        message.tenant = tenant
        message.advertiser = advertiser
        message.cname = cname
        message.priority = priority
        message.sendAt = sendAt
        message.expiresAt = expiresAt
        message.mailFrom = mailFrom
        message.fromName = fromName
        message.replyTo = replyTo
        message.cc = try cc.flatMap { $0.isEmpty ? nil : try Self.json($0) }
        message.bcc = try bcc.flatMap { $0.isEmpty ? nil : try Self.json($0) }
        message.textBody = textBody
        message.htmlBody = htmlBody
        message.headers = try headers.map { try Self.json($0) }
        message.idempotencyKey = idempotencyKey
        return (message, attachments)
    }

    private static func json(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// The idempotency key of a submission is already in the queue: the message it names is
/// there (SPEC §3), so the caller has nothing to resend.
public struct DuplicateMessage: Error, CustomStringConvertible, Equatable {
    public var id: Int64
    public var idempotencyKey: String
    public var description: String { "idempotency key \"\(idempotencyKey)\" is already message \(id)" }
}

/// The operations behind `mailroutectl enqueue` and `queue`, and the API's `/v1/messages`.
public struct QueueService: Sendable {
    public let settings: MailrouteConfiguration
    public let store: any QueueBackend

    public init(settings: MailrouteConfiguration, store: any QueueBackend) {
        self.settings = settings
        self.store = store
    }

    public func enqueue(_ submission: MessageSubmission) async throws -> Int64 {
        let (message, attachments) = try submission.validated()
        do {
            return try await store.enqueue(message, attachments: attachments)
        } catch {
            // Whatever refused the INSERT, a key already taken is the answer an enqueuer can use.
            if let key = submission.idempotencyKey, let id = try? await store.messageID(idempotencyKey: key) {
                throw DuplicateMessage(id: id, idempotencyKey: key)
            }
            throw error
        }
    }

    /// The message trace (`queue list --json`, `GET /v1/messages`), newest first.
    public func messages(_ filter: MessageFilter) async throws -> [MessageView] {
        let rows = try await store.messages(filter)
        let labels = try await configLabels()
        return rows.map { row in
            var view = MessageView(row)
            view.config = row.configId.flatMap { labels[$0] }
            return view
        }
    }

    /// Configuration ids and their `tenant/name`, to name the configuration rows refer to.
    public func configLabels() async throws -> [Int64: String] {
        Dictionary(uniqueKeysWithValues: try await store.configs().compactMap { c in c.id.map { ($0, c.label) } })
    }

    /// One message with its attempt log and attachments (`queue show`, `GET /v1/messages/{id}`).
    public func message(id: Int64) async throws -> MessageView {
        guard let (message, attempts, attachments) = try await store.message(id: id) else {
            throw MailrouteError.notFound("message \(id)")
        }
        var view = MessageView(message)
        if let configID = message.configId { view.config = try await store.config(id: configID)?.label }
        view.attemptLog = attempts.map(AttemptView.init)
        view.attachments = attachments.map(AttachmentView.init)
        return view
    }

    /// Puts one failed, expired, cancelled or deferred message back in line now.
    public func retry(id: Int64) async throws {
        let count = try await store.retry(ids: [id], onlyFailed: false, deadline: retryDeadline())
        if count == 0 {
            try await mustExist(id)
            throw MailrouteError.conflict("message \(id) is not failed, expired, cancelled or deferred")
        }
    }

    /// Puts every failed message back in line; returns how many.
    public func retryFailed() async throws -> Int {
        try await store.retry(ids: nil, onlyFailed: true, deadline: retryDeadline())
    }

    private func retryDeadline() -> Double {
        MessageLifetime(settings.delivery).retryDeadline(now: QueueStore.now())
    }

    public func cancel(id: Int64) async throws {
        guard try await store.cancel(id: id) else {
            try await mustExist(id)
            throw MailrouteError.conflict("message \(id) is no longer queued or deferred")
        }
    }

    /// A refusal names the right cause: no such message (404) or not in a state for it (409).
    private func mustExist(_ id: Int64) async throws {
        if try await store.message(id: id) == nil { throw MailrouteError.notFound("message \(id)") }
    }

    public func stats() async throws -> QueueCounts {
        try await store.counts(now: QueueStore.now())
    }
}
