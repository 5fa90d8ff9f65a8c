import ArgumentParser
import Foundation
import MailrouteCore

struct EnqueueCommand: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "enqueue", abstract: "Put a message in the queue, as an enqueuing service would.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The tenant (omit for platform mail).") var tenant: String?
    @Option(help: "Category: report, invite, password_reset, call_notification or another [a-z0-9_.-] name.") var category: String
    @Option(parsing: .upToNextOption, help: "Recipients (\"a@x.com\" or \"Name <a@x.com>\").") var to: [String]
    @Option(help: "Cc recipients.") var cc: [String] = []
    @Option(help: "Bcc recipients.") var bcc: [String] = []
    @Option(help: "Subject line.") var subject: String
    @Option(help: "File with the text body, or - for standard input.") var text: String?
    @Option(help: "File with the HTML body, or - for standard input.") var html: String?
    @Option(help: "A file to attach (repeatable).") var attach: [String] = []
    @Option(help: "1 (very high) to 5 (very low); default: the category's.") var priority: Int?
    @Option(help: "When to send: Unix seconds, ISO 8601 (2026-11-23T18:00:00Z) or +SECONDS.") var sendAt: String?
    @Option(help: "Advertiser routing key.") var advertiser: String?
    @Option(help: "Whitelabel CNAME routing key.") var cname: String?
    @Option(help: "Sender address override (checked against the configuration's authorized senders).") var from: String?
    @Option(help: "Sender name override.") var fromName: String?
    @Option(help: "Reply-To override.") var replyTo: String?
    @Option(help: "A second enqueue with the same key is refused.") var idempotencyKey: String?

    func execute() async throws {
        try await global.context.withService { service in
            for address in to + cc + bcc { _ = try Validate.address(address, field: "recipient") }
            if let priority, !(1...5).contains(priority) {
                throw MailrouteError.invalid(field: "--priority", reason: "must be 1-5, not \(priority)")
            }
            guard text != nil || html != nil else { throw MailrouteError.invalid(field: "--text", reason: "give --text or --html (or both)") }
            if text == "-" && html == "-" { throw MailrouteError.invalid(field: "--html", reason: "only one body can come from standard input") }

            var message = MessageRecord(category: category, rcptTo: try json(to), subject: subject)
            message.tenant = tenant
            message.advertiser = advertiser
            message.cname = cname
            message.cc = cc.isEmpty ? nil : try json(cc)
            message.bcc = bcc.isEmpty ? nil : try json(bcc)
            message.textBody = try text.map(read)
            message.htmlBody = try html.map(read)
            message.priority = priority
            message.sendAt = try sendAt.map(parseTime)
            message.mailFrom = from
            message.fromName = fromName
            message.replyTo = replyTo
            message.idempotencyKey = idempotencyKey
            let attachments = try attach.map { path -> (String, String, Data) in
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw MailrouteError.invalid(field: "--attach", reason: "\(path) cannot be read")
                }
                let name = URL(fileURLWithPath: path).lastPathComponent
                return (name, MediaType.guess(for: name), data)
            }
            let id = try await service.store.enqueue(message, attachments: attachments)
            if global.context.json { return try Output.object(["id": id]) }
            print("queued message \(id)")
        }
    }

    private func json(_ list: [String]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: list, options: [.withoutEscapingSlashes]), as: UTF8.self)
    }

    private func read(_ path: String) throws -> String {
        if path == "-" {
            return String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw MailrouteError.invalid(field: "body", reason: "\(path) cannot be read")
        }
        defer { try? handle.close() }
        return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
    }

    private func parseTime(_ text: String) throws -> Double {
        // Double() also reads "nan" and "inf": SQLite stores a NaN as NULL, which means now.
        if text.hasPrefix("+"), let seconds = Double(text.dropFirst()), seconds.isFinite { return Date().timeIntervalSince1970 + seconds }
        if let seconds = Double(text), seconds.isFinite { return seconds }
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        throw MailrouteError.invalid(field: "--send-at", reason: "\"\(text)\" is not Unix seconds, ISO 8601 or +SECONDS")
    }
}

struct QueueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue", abstract: "Look at and act on queued messages.",
        subcommands: [QueueList.self, QueueShow.self, QueueRetry.self, QueueCancel.self, QueueStats.self])
}

struct QueueList: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List messages, newest first.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this status.") var status: MessageStatus?
    @Option(help: "Only this tenant's.") var tenant: String?
    @Option(help: "At most this many.") var limit = 100

    func execute() async throws {
        try await global.context.withService { service in
            let rows = try await service.store.messages(status: status, tenant: tenant, limit: limit)
            if global.context.json { return try Output.json(rows.map(MessageView.init)) }
            Output.table(
                ["ID", "STATUS", "TENANT", "CATEGORY", "PRIO", "TRIES", "ROUTE", "CREATED", "SUBJECT"],
                rows.map { m in
                    [
                        "\(m.id ?? 0)", m.status.rawValue, m.tenant ?? "-", m.category, m.priority.map(String.init) ?? "-",
                        "\(m.attempts)", m.route?.rawValue ?? "-", formatTime(m.createdAt), String(m.subject.prefix(40)),
                    ]
                })
        }
    }
}

struct QueueShow: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "A message's state and its attempt log.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Message id.") var id: Int64

    func execute() async throws {
        try await global.context.withService { service in
            guard let (message, attempts, attachments) = try await service.store.message(id: id) else {
                throw MailrouteError.notFound("message \(id)")
            }
            if global.context.json {
                var view = MessageView(message)
                view.attemptLog = attempts.map(AttemptView.init)
                view.attachments = attachments.map(AttachmentView.init)
                return try Output.json(view)
            }
            Output.fields([
                ("message", "\(id)"), ("status", message.status.rawValue), ("tenant", message.tenant ?? "- (platform)"),
                ("category", message.category), ("priority", message.priority.map(String.init) ?? "category default"),
                ("to", StoredJSON.list(message.rcptTo)?.joined(separator: ", ") ?? "-"), ("subject", message.subject), ("route", message.route?.rawValue ?? "-"),
                ("tries", "\(message.attempts)"), ("next try", formatTime(message.nextAttemptAt)),
                ("expires", formatTime(message.expiresAt)), ("last error", message.lastErrorKind.map { "\($0): \(message.lastError ?? "")" } ?? "-"),
                ("server reply", message.smtpResponse ?? "-"), ("message-id", message.messageIdHeader ?? "-"),
                ("created", formatTime(message.createdAt)), ("sent", formatTime(message.sentAt)),
                ("attachments", attachments.isEmpty ? "-" : attachments.map(\.filename).joined(separator: ", ")),
            ])
            guard !attempts.isEmpty else { return }
            print("")
            Output.table(
                ["#", "TIME", "CONFIG", "ROUTE", "SERVER", "OUTCOME", "KIND", "CODE", "DURATION", "RESPONSE"],
                attempts.map { a in
                    [
                        "\(a.attempt)", formatTime(a.at), a.configLabel ?? "-", a.route?.rawValue ?? "-", a.server ?? "-",
                        a.outcome.rawValue, a.errorKind ?? "-", a.smtpCode.map(String.init) ?? "-",
                        a.durationS.map { String(format: "%.2fs", $0) } ?? "-", a.response ?? "-",
                    ]
                })
        }
    }
}

struct QueueRetry: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry", abstract: "Send a failed, expired, cancelled or deferred message again now.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Message id.") var id: Int64?
    @Flag(help: "Every failed message.") var failed = false

    func validate() throws {
        if (id == nil) == !failed { throw ValidationError("give a message id or --failed") }
    }

    func execute() async throws {
        try await global.context.withService { service in
            let deadline = MessageLifetime(service.settings.delivery).retryDeadline(now: QueueStore.now())
            let count = try await service.store.retry(ids: id.map { [$0] }, onlyFailed: failed, deadline: deadline)
            if let id, count == 0 {
                throw MailrouteError.conflict("message \(id) does not exist or is not failed, expired, cancelled or deferred")
            }
            if global.context.json { return try Output.object(["requeued": count]) }
            print("requeued \(count) message(s)")
        }
    }
}

struct QueueCancel: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a message that has not been sent.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Message id.") var id: Int64

    func execute() async throws {
        try await global.context.withService { service in
            guard try await service.store.cancel(id: id) else {
                throw MailrouteError.conflict("message \(id) does not exist or is no longer queued or deferred")
            }
            if global.context.json { return try Output.object(["cancelled": id]) }
            print("cancelled message \(id)")
        }
    }
}

struct QueueStats: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "Messages per status.")
    @OptionGroup var global: GlobalOptions

    func execute() async throws {
        try await global.context.withService { service in
            let c = try await service.store.counts(now: QueueStore.now())
            if global.context.json { return try Output.json(c) }
            Output.fields([
                ("queued", "\(c.queued)"), ("sending", "\(c.sending)"), ("deferred", "\(c.deferred)"), ("sent", "\(c.sent)"),
                ("failed", "\(c.failed)"), ("expired", "\(c.expired)"), ("cancelled", "\(c.cancelled)"),
                ("sent last minute", "\(c.sentLastMinute)"),
            ])
        }
    }
}

struct MessageView: Encodable {
    var id: Int64
    var status: String
    @Nullable var tenant: String?
    @Nullable var advertiser: String?
    @Nullable var cname: String?
    var category: String
    @Nullable var priority: Int?
    var rcptTo: [String]
    @Nullable var cc: [String]?
    @Nullable var bcc: [String]?
    @Nullable var mailFrom: String?
    @Nullable var fromName: String?
    @Nullable var replyTo: String?
    var subject: String
    @Nullable var headers: [String: String]?
    @Nullable var idempotencyKey: String?
    @Nullable var route: String?
    var attempts: Int
    @Nullable var sendAt: Double?
    @Nullable var nextAttemptAt: Double?
    @Nullable var expiresAt: Double?
    @Nullable var lastErrorKind: String?
    @Nullable var lastError: String?
    @Nullable var smtpResponse: String?
    @Nullable var messageIdHeader: String?
    @Nullable var createdAt: Double?
    @Nullable var sentAt: Double?
    /// `queue show` only.
    @Nullable var attemptLog: [AttemptView]?
    @Nullable var attachments: [AttachmentView]?

    init(_ m: MessageRecord) {
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

struct AttachmentView: Encodable {
    var filename: String
    var contentType: String
    var size: Int

    init(_ a: AttachmentRecord) {
        filename = a.filename
        contentType = a.contentType
        size = a.content.count
    }
}

struct AttemptView: Encodable {
    var attempt: Int
    var at: Double
    @Nullable var config: String?
    @Nullable var route: String?
    @Nullable var server: String?
    var outcome: String
    @Nullable var errorKind: String?
    @Nullable var smtpCode: Int?
    @Nullable var enhancedCode: String?
    @Nullable var response: String?
    @Nullable var refusedRecipients: [RefusedRecipient]?
    @Nullable var durationS: Double?

    init(_ a: AttemptRecord) {
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
