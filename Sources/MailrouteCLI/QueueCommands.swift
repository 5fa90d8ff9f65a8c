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
            guard text != nil || html != nil else { throw MailrouteError.invalid(field: "--text", reason: "give --text or --html (or both)") }
            if text == "-" && html == "-" { throw MailrouteError.invalid(field: "--html", reason: "only one body can come from standard input") }

            var message = MessageSubmission(category: category, rcptTo: to, subject: subject)
            message.tenant = tenant
            message.advertiser = advertiser
            message.cname = cname
            message.cc = cc
            message.bcc = bcc
            message.textBody = try text.map(read)
            message.htmlBody = try html.map(read)
            message.priority = priority
            message.sendAt = try sendAt.map(parseTime)
            message.mailFrom = from
            message.fromName = fromName
            message.replyTo = replyTo
            message.idempotencyKey = idempotencyKey
            message.attachments = try attach.map { path in
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw MailrouteError.invalid(field: "--attach", reason: "\(path) cannot be read")
                }
                return .init(filename: URL(fileURLWithPath: path).lastPathComponent, contentType: nil, content: data)
            }
            let id = try await service.queue.enqueue(message)
            if global.context.json { return try Output.object(["id": id]) }
            print("queued message \(id)")
        }
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
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List messages, newest first: the message trace.",
        discussion: """
            Every option given must hold. Which mail did acme/main's outage send through the relay, and where is it now:

                mailroutectl queue list --config acme/main --route fallback --since 2h

            --config T/N is mail routed to that configuration or tried through it, so mail sent straight to the relay \
            while it was down is in. --since takes \(MessageFilter.sinceForms).

            Here --config names a configuration, as in `route set`: the config file goes before the subcommand \
            (mailroutectl --config FILE queue list …) or as --config-file FILE.
            """)
    @OptionGroup var global: GlobalOptionsWithoutConfig
    @Option(help: "Only this status (\(MessageStatus.allCases.map(\.rawValue).joined(separator: ", "))).") var status: String?
    @Option(help: "Only this tenant's.") var tenant: String?
    @Option(name: .customLong("config"), help: ArgumentHelp(
        "Only mail of this configuration: routed to it, or tried through it.", valueName: "tenant/name"))
    var configuration: String?
    @Option(help: "Only this route (\(RouteStep.allCases.map(\.rawValue).joined(separator: ", "))).") var route: String?
    @Option(help: "Only mail created at or after this time: Unix seconds, ISO 8601, or a time ago (-3600, 90s, 30m, 1h, 2d).")
    var since: String?
    @Option(help: "Only mail with a recipient (to, cc or bcc) at this domain, exactly (not its subdomains).") var domain: String?
    @Option(help: "At most this many (\(MessageFilter.limits.lowerBound)-\(MessageFilter.limits.upperBound)).")
    var limit = "\(MessageFilter.defaultLimit)"

    func execute() async throws {
        let filter: MessageFilter
        do {
            filter = try MessageFilter(
                tenant: tenant, status: status, config: configuration, route: route, since: since, domain: domain, limit: limit)
        } catch MailrouteError.invalid(let field, let reason) {
            // The parser names the API's field; here it is the option the operator typed.
            throw MailrouteError.invalid(field: "--\(field)", reason: reason)
        }
        try await global.context.withService { service in
            if global.context.json { return try Output.json(try await service.queue.messages(filter)) }
            let rows = try await service.store.messages(filter)
            // The configuration the message is for: beside ROUTE `fallback`, whose server it
            // went around. A deleted one's mail shows `-` (its attempts keep the name).
            let labels = try await service.queue.configLabels()
            Output.table(
                ["ID", "STATUS", "TENANT", "CATEGORY", "PRIO", "TRIES", "CONFIG", "ROUTE", "CREATED", "SUBJECT"],
                rows.map { m in
                    [
                        "\(m.id ?? 0)", m.status.rawValue, m.tenant ?? "-", m.category, m.priority.map(String.init) ?? "-",
                        "\(m.attempts)", m.configId.flatMap { labels[$0] } ?? "-", m.route?.rawValue ?? "-", formatTime(m.createdAt),
                        String(m.subject.prefix(40)),
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
            if global.context.json { return try Output.json(try await service.queue.message(id: id)) }
            guard let (message, attempts, attachments) = try await service.store.message(id: id) else {
                throw MailrouteError.notFound("message \(id)")
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
            let count: Int
            if let id {
                try await service.queue.retry(id: id)
                count = 1
            } else {
                count = try await service.queue.retryFailed()
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
            try await service.queue.cancel(id: id)
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
            let c = try await service.queue.stats()
            if global.context.json { return try Output.json(c) }
            Output.fields([
                ("queued", "\(c.queued)"), ("sending", "\(c.sending)"), ("deferred", "\(c.deferred)"), ("sent", "\(c.sent)"),
                ("failed", "\(c.failed)"), ("expired", "\(c.expired)"), ("cancelled", "\(c.cancelled)"),
                ("sent last minute", "\(c.sentLastMinute)"),
            ])
        }
    }
}
