import Foundation

/// What a message says, before it becomes bytes.
public struct OutgoingMessage: Sendable {
    public var from: EmailAddress
    public var to: [EmailAddress]
    public var cc: [EmailAddress] = []
    public var replyTo: EmailAddress?
    public var subject: String
    public var textBody: String?
    public var htmlBody: String?
    public var attachments: [Attachment] = []
    /// Extra headers, already checked to be safe names and values.
    public var extraHeaders: [(name: String, value: String)] = []
    public var date = Date()

    public struct Attachment: Sendable {
        public var filename: String
        public var contentType: String
        public var content: [UInt8]
        public init(filename: String, contentType: String, content: [UInt8]) {
            self.filename = filename
            self.contentType = contentType
            self.content = content
        }
    }

    public init(from: EmailAddress, to: [EmailAddress], subject: String, textBody: String? = nil, htmlBody: String? = nil) {
        self.from = from
        self.to = to
        self.subject = subject
        self.textBody = textBody
        self.htmlBody = htmlBody
    }
}

/// RFC 5322 + MIME: CRLF line ends, every line under 998 octets, non-ASCII headers as
/// RFC 2047 encoded words, UTF-8 bodies in quoted-printable, attachments in base64.
public enum MessageComposer {
    public struct Composed: Sendable {
        public var bytes: [UInt8]
        /// Without angle brackets.
        public var messageID: String
    }

    /// A version 4 UUID from the system generator (getrandom(2)). Foundation's `UUID()` on
    /// Linux opens, reads and closes /dev/urandom for each one: 1.2 % of the daemon's CPU
    /// in a drain (perf), for a Message-ID and a MIME boundary per message.
    static func randomUUID() -> UUID {
        var generator = SystemRandomNumberGenerator()
        var bytes: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &bytes) { raw in
            raw.storeBytes(of: generator.next() as UInt64, toByteOffset: 0, as: UInt64.self)
            raw.storeBytes(of: generator.next() as UInt64, toByteOffset: 8, as: UInt64.self)
            raw[6] = raw[6] & 0x0f | 0x40  // version 4
            raw[8] = raw[8] & 0x3f | 0x80  // RFC 4122 variant
        }
        return UUID(uuid: bytes)
    }

    public static func compose(_ message: OutgoingMessage) -> Composed {
        let messageID = "\(randomUUID().uuidString.lowercased())@\(message.from.domain)"
        var head = HeaderWriter()
        head.add("Date", rfc5322Date(message.date))
        head.add("From", encodeMailboxes([message.from]))
        head.add("To", encodeMailboxes(message.to))
        if !message.cc.isEmpty { head.add("Cc", encodeMailboxes(message.cc)) }
        if let replyTo = message.replyTo { head.add("Reply-To", encodeMailboxes([replyTo])) }
        head.add("Message-ID", "<\(messageID)>")
        head.add("Subject", encodeUnstructured(message.subject, after: "Subject"))
        for (name, value) in message.extraHeaders { head.add(name, encodeUnstructured(value, after: name)) }
        head.add("MIME-Version", "1.0")

        var body = Part.body(text: message.textBody, html: message.htmlBody)
        if !message.attachments.isEmpty {
            body = .multipart("mixed", [body] + message.attachments.map(Part.attachment))
        }
        var out = head.text
        body.write(into: &out)
        return Composed(bytes: Array(out.utf8), messageID: messageID)
    }

    // MARK: - Headers

    /// `Mon, 23 Nov 2026 11:49:44 +0000`, always in UTC. Formatted by hand: a DateFormatter
    /// per message (ICU's date format setup) was a tenth of the daemon's CPU.
    static func rfc5322Date(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var t = tm()
        gmtime_r(&seconds, &t)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(days[Int(t.tm_wday)]), \(two(t.tm_mday)) \(months[Int(t.tm_mon)]) \(t.tm_year + 1900) "
            + "\(two(t.tm_hour)):\(two(t.tm_min)):\(two(t.tm_sec)) +0000"
    }

    static func encodeMailboxes(_ boxes: [EmailAddress]) -> String {
        boxes.map { box in
            guard let name = box.displayName, !name.isEmpty else { return box.address }
            return "\(encodePhrase(name)) <\(box.address)>"
        }.joined(separator: ",\r\n ")
    }

    /// A display name: as is when it is plain atoms, quoted when it has specials, encoded when
    /// not printable ASCII (control characters included: a quoted string would carry them into
    /// the header) or too long to sit on one line beside the address.
    static func encodePhrase(_ name: String) -> String {
        guard name.utf8.count <= 76, name.unicodeScalars.allSatisfy({ $0 == "\t" || (0x20...0x7E).contains($0.value) }) else {
            return encodedWords(name)
        }
        let atomChars = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~ ")
        if name.unicodeScalars.allSatisfy({ atomChars.contains($0) }) { return name }
        let escaped = name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        return escaped.utf8.count <= 76 ? "\"\(escaped)\"" : encodedWords(name)
    }

    /// The value of the field `name`. Printable ASCII and tab go as they are, folded before
    /// whitespace so lines stay near 78 octets; anything else, control characters included,
    /// only ever inside an encoded word, where it cannot end the header. Encoded words also
    /// carry ASCII that looks like one, and text that no folding keeps under 998 octets a line
    /// (a word that long, or a run of blanks).
    static func encodeUnstructured(_ text: String, after name: String) -> String {
        let plain = text.unicodeScalars.allSatisfy { $0 == "\t" || (0x20...0x7E).contains($0.value) }
        if plain && !text.contains("=?"), let folded = foldPlain(text, used: name.utf8.count + 2) { return folded }
        return encodedWords(text)
    }

    /// Printable ASCII folded (CRLF inserted before a run of blanks) where a line would pass
    /// 78 octets, `used` of the first taken by the field name; nil when a line would still
    /// pass 998. Unfolding (removing each CRLF) gives `text` back. A line of blanks alone is
    /// never made.
    static func foldPlain(_ text: String, used: Int) -> String? {
        let bytes = Array(text.utf8)
        if used + bytes.count <= 78 { return text }
        func isBlank(_ b: UInt8) -> Bool { b == 32 || b == 9 }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + bytes.count / 30 + 2)
        var lineLength = used
        var i = 0
        while i < bytes.count {
            // One token: a run of blanks, then a run of other characters.
            var j = i
            while j < bytes.count, isBlank(bytes[j]) { j += 1 }
            var k = j
            while k < bytes.count, !isBlank(bytes[k]) { k += 1 }
            if i > 0, j > i, k > j, lineLength + (k - i) > 78 {
                out += [13, 10]
                lineLength = 0
            }
            out += bytes[i..<k]
            lineLength += k - i
            if lineLength > 998 { return nil }
            i = k
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 2047 B-encoding in words of at most 75 octets, split between Unicode scalars (the
    /// "characters" of RFC 2047 §5): a grapheme cluster can be longer than any word, such as a
    /// letter with a thousand combining marks.
    static func encodedWords(_ text: String) -> String {
        let maxPayload = 45  // 45 bytes -> 60 base64 chars + 12 of framing = 72
        var words: [String] = []
        var chunk: [UInt8] = []
        for scalar in text.unicodeScalars {
            let bytes = Array(String(scalar).utf8)
            if chunk.count + bytes.count > maxPayload, !chunk.isEmpty {
                words.append("=?UTF-8?B?\(Data(chunk).base64EncodedString())?=")
                chunk.removeAll()
            }
            chunk += bytes
        }
        if !chunk.isEmpty || words.isEmpty { words.append("=?UTF-8?B?\(Data(chunk).base64EncodedString())?=") }
        return words.joined(separator: "\r\n ")
    }

    // MARK: - Bodies

    indirect enum Part {
        case leaf(headers: [(String, String)], body: String)
        case multipart(String, [Part])

        static func body(text: String?, html: String?) -> Part {
            switch (text, html) {
            case let (text?, html?): .multipart("alternative", [textLeaf(text, "plain"), textLeaf(html, "html")])
            case let (nil, html?): textLeaf(html, "html")
            case let (text, nil): textLeaf(text ?? "", "plain")
            }
        }

        static func textLeaf(_ text: String, _ subtype: String) -> Part {
            .leaf(
                headers: [("Content-Type", "text/\(subtype); charset=utf-8"), ("Content-Transfer-Encoding", "quoted-printable")],
                body: quotedPrintable(text))
        }

        static func attachment(_ a: OutgoingMessage.Attachment) -> Part {
            let name = parameterValue(a.filename)
            // The name on a line of its own: a long one is folded inside its quotes.
            return .leaf(
                headers: [
                    ("Content-Type", "\(a.contentType);\r\n name=\(name)"),
                    ("Content-Disposition", "attachment;\r\n filename=\(name)"),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                body: base64Lines(a.content))
        }

        func write(into out: inout String) {
            switch self {
            case .leaf(let headers, let body):
                for (name, value) in headers { out += "\(name): \(value)\r\n" }
                out += "\r\n"
                out += body
                if !body.hasSuffix("\r\n") { out += "\r\n" }
            case .multipart(let subtype, let parts):
                let boundary = "=_mr_\(MessageComposer.randomUUID().uuidString.replacingOccurrences(of: "-", with: ""))"
                out += "Content-Type: multipart/\(subtype); boundary=\"\(boundary)\"\r\n\r\n"
                for part in parts {
                    out += "--\(boundary)\r\n"
                    part.write(into: &out)
                }
                out += "--\(boundary)--\r\n"
            }
        }
    }

    /// Base64 in lines of 76 characters, each ended by CRLF.
    static func base64Lines(_ bytes: [UInt8]) -> String {
        let encoded = Array(Data(bytes).base64EncodedString().utf8)
        var out: [UInt8] = []
        out.reserveCapacity(encoded.count + encoded.count / 38 + 2)
        var start = 0
        while start < encoded.count {
            let end = min(start + 76, encoded.count)
            out += encoded[start..<end]
            out += [13, 10]
            start = end
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A MIME parameter value: quoted printable ASCII, or encoded words for other names (what
    /// mail clients read), folded inside the quotes (a quoted string may hold folding white
    /// space, RFC 5322 §3.2.4) so a long name keeps every line under 998 octets.
    static func parameterValue(_ value: String) -> String {
        if value.utf8.count <= 900, value.unicodeScalars.allSatisfy({ (0x20...0x7E).contains($0.value) && $0 != "\"" && $0 != "\\" }) {
            return "\"\(value)\""
        }
        return "\"\(encodedWords(value))\""
    }

    /// Quoted-printable (RFC 2045) over UTF-8 with CRLF line ends and soft breaks at 76.
    /// CRLF, CR and LF in the text all end a line. One pass over the bytes: this runs for
    /// every message, and going through Foundation's string search cost a third of the
    /// daemon's CPU.
    static func quotedPrintable(_ text: String) -> String {
        var text = text
        return text.withUTF8 { bytes in
            let n = bytes.count
            // At most 3 bytes per input byte, plus a 3-byte soft break per 24 of them and the
            // final CRLF. Written through a pointer: appends to an array cost half this
            // function's time in their capacity and uniqueness checks (perf).
            let capacity = n * 3 + (n / 24 + 1) * 3 + 2
            return String(unsafeUninitializedCapacity: capacity) { out in
                let hex: StaticString = "0123456789ABCDEF"
                let digits = hex.utf8Start
                var o = 0
                var column = 0
                var i = 0
                while i <= n {
                    guard i < n, bytes[i] != 13, bytes[i] != 10 else {
                        out[o] = 13
                        out[o + 1] = 10
                        o += 2
                        column = 0
                        if i < n, bytes[i] == 13, i + 1 < n, bytes[i + 1] == 10 { i += 1 }
                        i += 1
                        continue
                    }
                    let b = bytes[i]
                    let isLast = i + 1 == n || bytes[i + 1] == 13 || bytes[i + 1] == 10
                    let literal = (b >= 33 && b <= 126 && b != UInt8(ascii: "=")) || ((b == 32 || b == 9) && !isLast)
                    let width = literal ? 1 : 3
                    if column + width > 75 {
                        out[o] = UInt8(ascii: "=")
                        out[o + 1] = 13
                        out[o + 2] = 10
                        o += 3
                        column = 0
                    }
                    if literal {
                        out[o] = b
                        o += 1
                    } else {
                        out[o] = UInt8(ascii: "=")
                        out[o + 1] = digits[Int(b >> 4)]
                        out[o + 2] = digits[Int(b & 0xF)]
                        o += 3
                    }
                    column += width
                    i += 1
                }
                return o
            }
        }
    }
}

/// Collects headers, folding none itself: every value handed to it is already one line or
/// folded with CRLF SP by the encoders above.
struct HeaderWriter {
    var text = ""
    mutating func add(_ name: String, _ value: String) {
        text += "\(name): \(value)\r\n"
    }
}
