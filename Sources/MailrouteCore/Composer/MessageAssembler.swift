import Foundation

/// Who a message says it is from, decided by the dispatcher per route.
public struct SenderIdentity: Sendable, Equatable {
    public var address: String
    public var name: String?
    public var replyTo: String?

    public init(address: String, name: String?, replyTo: String?) {
        self.address = address
        self.name = name
        self.replyTo = replyTo
    }
}

/// A queue row that passed the CHECKs but cannot be sent; the row is failed with this reason.
public struct InvalidMessage: Error, CustomStringConvertible, Equatable {
    public let description: String
    /// Clipped: reasons quote what the row said, and a row can say megabytes (`last_error`
    /// and the log line would carry them whole).
    init(_ description: String) {
        self.description = description.count > 400 ? description.prefix(400) + "…" : description
    }
}

/// Turns a queue row into the bytes and envelope of one SMTP transaction.
public enum MessageAssembler {
    public struct Assembled: Sendable {
        public var envelopeFrom: String
        /// To, Cc and Bcc, each once.
        public var recipients: [String]
        public var composed: MessageComposer.Composed
    }

    static let forbiddenHeaders: Set<String> = [
        "from", "to", "cc", "bcc", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding",
        "reply-to", "sender", "return-path", "subject", "dkim-signature",
    ]

    public static func assemble(
        _ row: MessageRecord, attachments: [AttachmentRecord], identity: SenderIdentity, now: Date = Date()
    ) throws -> Assembled {
        if let defect = row.textDefect { throw InvalidMessage(defect) }
        if let name = identity.name { try checkHeaderText(name, "from_name") }
        let from: EmailAddress
        do {
            from = try EmailAddress(address: identity.address, displayName: identity.name)
        } catch {
            throw InvalidMessage("sender \(identity.address): \(error)")
        }
        let to = try addresses(row.rcptTo, column: "rcpt_to")
        guard !to.isEmpty else { throw InvalidMessage("rcpt_to has no address") }
        let cc = try row.cc.map { try addresses($0, column: "cc") } ?? []
        let bcc = try row.bcc.map { try addresses($0, column: "bcc") } ?? []
        try checkHeaderText(row.subject, "subject")
        guard row.textBody != nil || row.htmlBody != nil else { throw InvalidMessage("neither text_body nor html_body") }

        var message = OutgoingMessage(from: from, to: to, subject: row.subject, textBody: row.textBody, htmlBody: row.htmlBody)
        message.cc = cc
        message.date = now
        if let replyTo = identity.replyTo {
            do {
                message.replyTo = try EmailAddress(parsing: replyTo)
            } catch {
                throw InvalidMessage("reply_to \(replyTo): \(error)")
            }
        }
        message.extraHeaders = try headers(row.headers)
        message.attachments = try attachments.map { a in
            if let defect = a.textDefect { throw InvalidMessage("attachment \(a.id ?? 0) \(defect)") }
            // As the schema's CHECK says, again here: a row can be UPDATEd past it.
            guard (1...255).contains(a.filename.count) else {
                throw InvalidMessage("attachment \(a.id ?? 0) file name must be 1-255 characters, not \(a.filename.count)")
            }
            try checkHeaderText(a.filename, "attachment \(a.id ?? 0) file name")
            try checkContentType(a.contentType, "attachment \(a.id ?? 0) content_type")
            return OutgoingMessage.Attachment(filename: a.filename, contentType: a.contentType, content: [UInt8](a.content))
        }

        var seen = Set<String>()
        let recipients = (to + cc + bcc).map(\.address).filter { seen.insert($0.lowercased()).inserted }
        return Assembled(envelopeFrom: from.address, recipients: recipients, composed: MessageComposer.compose(message))
    }

    /// Text an enqueuer controls that ends up in a header. The CHECKs refuse CR and LF at
    /// INSERT, but a row can be UPDATEd past them, so the daemon checks again; other control
    /// characters are refused too, since servers treat a NUL or a lone CR unpredictably.
    static func checkHeaderText(_ value: String, _ field: String) throws {
        for scalar in value.unicodeScalars {
            if scalar == "\r" || scalar == "\n" || scalar == "\u{2028}" || scalar == "\u{2029}" || scalar == "\u{85}" {
                throw InvalidMessage("\(field) contains a line break")
            }
            if scalar.value < 0x20 && scalar != "\t" || scalar.value == 0x7F {
                throw InvalidMessage("\(field) contains the control character U+\(String(format: "%04X", scalar.value))")
            }
        }
    }

    /// `type/subtype` with optional parameters; multipart and message types would let an
    /// attachment rewrite the message's own MIME structure.
    static func checkContentType(_ value: String, _ field: String) throws {
        let base = value.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        let tokenCharacters = Set("abcdefghijklmnopqrstuvwxyz0123456789!#$&^_.+-")
        let parts = base.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(tokenCharacters.contains) }) else {
            throw InvalidMessage("\(field) \"\(value)\" is not type/subtype")
        }
        guard parts[0] != "multipart", parts[0] != "message" else {
            throw InvalidMessage("\(field) \"\(value)\": an attachment cannot be \(parts[0])/*")
        }
        try checkHeaderText(value, field)
        // It goes into the part's header as it is: printable ASCII, short enough for one line.
        guard value.utf8.count <= 255 else { throw InvalidMessage("\(field) is longer than 255 octets") }
        guard value.unicodeScalars.allSatisfy({ (0x20...0x7E).contains($0.value) }) else {
            throw InvalidMessage("\(field) \"\(value)\" must be printable ASCII")
        }
    }

    static func addresses(_ json: String, column: String) throws -> [EmailAddress] {
        guard let array = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [Any] else {
            throw InvalidMessage("\(column) is not a JSON array")
        }
        return try array.enumerated().map { index, item in
            guard let text = item as? String else { throw InvalidMessage("\(column)[\(index)] is not a string") }
            do {
                return try EmailAddress(parsing: text)
            } catch {
                throw InvalidMessage("\(column)[\(index)]: \(error)")
            }
        }
    }

    static func headers(_ json: String?) throws -> [(name: String, value: String)] {
        guard let json else { return [] }
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw InvalidMessage("headers is not a JSON object")
        }
        return try object.keys.sorted().map { name in
            guard let value = object[name] as? String else { throw InvalidMessage("headers.\(name) is not a string") }
            guard !name.isEmpty, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }) else {
                throw InvalidMessage("header name \"\(name)\" is not printable ASCII without colon")
            }
            // Name and first word share a line that may not pass 998 octets.
            guard name.utf8.count <= 76 else { throw InvalidMessage("header name \(name.prefix(20))… is longer than 76 characters") }
            guard !forbiddenHeaders.contains(name.lowercased()) else {
                throw InvalidMessage("headers may not set \(name)")
            }
            try checkHeaderText(value, "header \(name)")
            return (name, value)
        }
    }
}
