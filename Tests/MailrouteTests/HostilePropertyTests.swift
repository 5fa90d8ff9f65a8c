import Crypto
import Foundation
import Testing

@testable import MailrouteCore

/// Issue 12 item 4, hostile input: generated rows, addresses, headers and config files, seeded
/// and bounded (`Support/Property.swift`). Each property: no crash, no header the input did not
/// intend, and every refusal a clean error of the right kind with a reason.
@Suite struct ComposerProperties {
    static let dkimKey = try! DKIMKey.generate(domain: "acme.test", selector: "prop", algorithm: .ed25519SHA256).key

    /// A row whose every enqueuer field is generated, and the sender identity the dispatcher
    /// would hand the assembler. Most fields are text that passes the schema (printable, any
    /// script); in each case a few are hostile (controls, line breaks, broken JSON), so that
    /// composing gets exercised as well as refusing.
    static func row(_ g: inout Gen) -> (MessageRecord, [AttachmentRecord], SenderIdentity) {
        let hostility = g.chance(0.2) ? 0.5 : 0.08
        func text(_ g: inout Gen, _ typical: Int, max: Int) -> String {
            g.chance(hostility) ? g.hostileText(typical, max: max) : g.printableText(typical, max: max)
        }
        func plausibleList(_ g: inout Gen) -> String {
            if g.chance(hostility) { return g.addressJSON() }
            let list = (0..<(g.chance(0.9) ? g.int(1...3) : g.int(1...60))).map { _ -> String in
                let spec = "\(g.pick(Gen.validLocals.filter { $0 != "ü" }))@\(g.pick(Gen.validDomains))"
                switch g.int(0...3) {
                case 0: return spec
                case 1: return "\(text(&g, 6, max: 200)) <\(spec)>"
                case 2: return "\"\(text(&g, 6, max: 120).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\" <\(spec)>"
                default: return g.chance(hostility) ? g.address() : "\(g.pick(Gen.validDomains)) <\(spec)>"
                }
            }
            return String(decoding: try! JSONSerialization.data(withJSONObject: list), as: UTF8.self)
        }
        var row = MessageRecord(category: "report", rcptTo: plausibleList(&g), subject: text(&g, 10, max: g.chance(0.1) ? 2500 : 200))
        row.id = 1
        row.cc = g.chance(0.3) ? plausibleList(&g) : nil
        row.bcc = g.chance(0.2) ? plausibleList(&g) : nil
        row.textBody = g.chance(0.8) ? g.hostileText(30, max: 4000) : nil
        row.htmlBody = g.chance(0.4) || row.textBody == nil ? g.hostileText(30, max: 2000) : nil
        row.headers = g.chance(hostility * 3) ? g.headersJSON() : nil
        let attachments = (0..<(g.chance(0.7) ? 0 : g.int(1...3))).map { i -> AttachmentRecord in
            let filename: String
            switch g.int(0...3) {
            case 0: filename = g.pick(["report.pdf", "données.bin", "a\"b.txt", "back\\slash", "=?UTF-8?B?eA==?=.txt"])
            case 1: filename = text(&g, 8, max: 300)
            case 2: filename = String(repeating: g.pick(["😀", "é", "a", "例", "e\u{301}"]), count: g.int(1...300))
            default: filename = g.hostileText(6, max: 80)
            }
            let contentType = g.chance(1 - hostility)
                ? g.pick(["application/pdf", "text/plain; charset=utf-8", "image/png", "application/octet-stream"])
                : g.chance(0.5) ? g.pick(["multipart/mixed; boundary=x", "message/rfc822", "text", "a/b/c", "text/plain; name=\"x\"",
                                         "application/" + String(repeating: "x", count: 1500), "text/plain; x=é"])
                : g.hostileText(5, max: 60)
            return AttachmentRecord(
                id: Int64(i + 1), messageId: 1, filename: filename, contentType: contentType,
                content: Data(g.bytes(g.length(200, max: 5000))))
        }
        let address = g.chance(1 - hostility) ? "main@acme.test" : g.address()
        let name: String? = g.chance(0.5) ? text(&g, 6, max: 300) : nil
        let replyTo: String? = g.chance(0.3) ? (g.chance(1 - hostility) ? "Support <help@acme.test>" : g.address()) : nil
        return (row, attachments, SenderIdentity(address: address, name: name, replyTo: replyTo))
    }

    @Test func rowsComposeIntoSafeMessagesOrFailAsInvalid() {
        var composed = 0
        var refused: [String: Int] = [:]
        let ran = Property.check("row -> message", count: 3000, seconds: 5) { g in
            let (row, attachments, identity) = Self.row(&g)
            g.note("row", row)
            g.note("attachments", attachments.map { ($0.filename, $0.contentType, $0.content.count) })
            g.note("identity", identity)
            let assembled: MessageAssembler.Assembled
            do {
                assembled = try MessageAssembler.assemble(row, attachments: attachments, identity: identity, now: Date(timeIntervalSince1970: 1_800_000_000))
            } catch let error as InvalidMessage {
                refused[String(error.description.prefix(20)), default: 0] += 1
                return error.description.isEmpty ? ["InvalidMessage without a reason"] : []
            }
            composed += 1
            let extras = Wire.headerNames(row.headers)
            var problems = Wire.problems(assembled.composed.bytes, extras: extras)
            let head = Wire.headerFields(assembled.composed.bytes)
            if let subject = head.first(where: { $0.name.lowercased() == "subject" }) {
                if let decoded = Wire.decodeUnstructured(subject.value), decoded != row.subject {
                    problems.append("Subject reads back as \(decoded.debugDescription)")
                }
            }
            for (name, value) in Wire.headerValues(row.headers) {
                guard let field = head.first(where: { $0.name == name }) else {
                    problems.append("extra header \(name) is missing")
                    continue
                }
                if let decoded = Wire.decodeUnstructured(field.value), decoded != value {
                    problems.append("header \(name) reads back as \(decoded.debugDescription)")
                }
            }
            for address in [assembled.envelopeFrom] + assembled.recipients {
                if !address.unicodeScalars.allSatisfy({ (0x20...0x7E).contains($0.value) }) || !address.contains("@") {
                    problems.append("envelope address \(address.debugDescription)")
                }
            }
            if assembled.recipients.isEmpty { problems.append("no recipients") }
            if g.chance(0.2) {
                do {
                    let signed = try DKIMSigner.sign(assembled.composed.bytes, keys: [Self.dkimKey], now: Date())
                    problems += Wire.problems(signed, extras: extras + ["DKIM-Signature"]).map { "signed: \($0)" }
                } catch {
                    problems.append("signing threw \(error)")
                }
            }
            return problems
        }
        #expect(composed > ran / 5, "too few rows composed (\(composed) of \(ran)) for the property to say much; \(refused.sorted { $0.value > $1.value }.prefix(8))")
    }
}

/// What a receiving server would see of a composed message.
enum Wire {
    static let base: [String: ClosedRange<Int>] = [
        "date": 1...1, "from": 1...1, "to": 1...1, "cc": 0...1, "reply-to": 0...1, "message-id": 1...1, "subject": 1...1,
        "mime-version": 1...1, "content-type": 1...1, "content-transfer-encoding": 0...1,
    ]

    static func headerObject(_ json: String?) -> [String: String] {
        guard let json, let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return [:] }
        return object.compactMapValues { $0 as? String }
    }
    static func headerNames(_ json: String?) -> [String] { Array(headerObject(json).keys) }
    static func headerValues(_ json: String?) -> [(String, String)] { headerObject(json).map { ($0.key, $0.value) } }

    /// Line and byte problems over the whole message, then header-section problems: a field
    /// whose name the composer does not write and the row did not ask for, or a field that
    /// occurs more often than it may (a second From, any Bcc).
    static func problems(_ bytes: [UInt8], extras: [String]) -> [String] {
        var problems: [String] = []
        var lineStart = 0
        for i in bytes.indices {
            let b = bytes[i]
            if b == 13 {
                if i + 1 >= bytes.count || bytes[i + 1] != 10 { problems.append("bare CR at \(i)"); break }
            } else if b == 10 {
                if i == 0 || bytes[i - 1] != 13 { problems.append("bare LF at \(i)"); break }
                if i - 1 - lineStart > 998 { problems.append("a line of \(i - 1 - lineStart) octets at \(lineStart)"); break }
                lineStart = i + 1
            } else if !(b == 9 || (32...126).contains(b)) {
                problems.append(String(format: "byte 0x%02X at %d", b, i))
                break
            }
        }
        if bytes.count - lineStart > 998 { problems.append("a last line of \(bytes.count - lineStart) octets") }
        guard let end = headerEnd(bytes) else { return problems + ["no empty line after the header section"] }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        if lines.first?.first == " " || lines.first?.first == "\t" { problems.append("the first header line is a continuation") }
        for line in lines where line.first == " " || line.first == "\t" {
            if line.allSatisfy({ $0 == " " || $0 == "\t" }) { problems.append("a header line of only whitespace") }
        }
        var counts: [String: Int] = [:]
        for field in headerFields(bytes) {
            guard !field.name.isEmpty, field.name.unicodeScalars.allSatisfy({ (33...126).contains($0.value) }) else {
                problems.append("a header line that is not a field: \(field.name.debugDescription)")
                continue
            }
            counts[field.name.lowercased(), default: 0] += 1
        }
        let extraCounts = Dictionary(extras.map { ($0.lowercased(), 1) }, uniquingKeysWith: +)
        for (name, count) in counts {
            let allowed = base[name].map { ($0.lowerBound + (extraCounts[name] ?? 0))...($0.upperBound + (extraCounts[name] ?? 0)) }
                ?? (extraCounts[name] ?? 0)...(extraCounts[name] ?? 0)
            if !allowed.contains(count) { problems.append("\(count) \(name) header(s), allowed \(allowed)") }
        }
        for (name, range) in base where range.lowerBound > 0 && counts[name] == nil { problems.append("no \(name) header") }
        return problems
    }

    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 2
        }
        return nil
    }

    /// The header section's fields, unfolded (CRLF before whitespace removed), values after ": ".
    static func headerFields(_ bytes: [UInt8]) -> [(name: String, value: String)] {
        guard let end = headerEnd(bytes) else { return [] }
        var fields: [(String, String)] = []
        for line in String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n") where !line.isEmpty {
            if line.first == " " || line.first == "\t", !fields.isEmpty {
                fields[fields.count - 1].1 += line
            } else {
                let parts = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
                fields.append((String(parts[0]), parts.count > 1 ? String(parts[1]) : ""))
            }
        }
        return fields.map { name, value in (name, value.hasPrefix(" ") ? String(value.dropFirst()) : value) }
    }

    /// An unstructured value as a reader decodes it: plain text, or RFC 2047 B-words
    /// (whitespace between adjacent words ignored). Nil for a form the composer never writes.
    static func decodeUnstructured(_ value: String) -> String? {
        guard value.contains("=?") else { return value }
        var bytes: [UInt8] = []
        for word in value.split(separator: " ") {
            guard word.hasPrefix("=?UTF-8?B?"), word.hasSuffix("?="), let data = Data(base64Encoded: String(word.dropFirst(10).dropLast(2)))
            else { return "<not an encoded word: \(word)>" }
            bytes += data
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

@Suite struct AddressProperties {
    static func check(_ a: EmailAddress) -> [String] {
        var problems: [String] = []
        if !a.address.unicodeScalars.allSatisfy({ (0x20...0x7E).contains($0.value) }) {
            problems.append("address \(a.address.debugDescription) is not printable ASCII")
        }
        if a.address.contains(" ") && !a.address.hasPrefix("\"") { problems.append("a space outside quotes") }
        if a.address.utf8.count > 64 + 1 + 255 { problems.append("address of \(a.address.utf8.count) octets") }
        if let name = a.displayName, name.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" || $0 == "\0" }) {
            problems.append("display name \(name.debugDescription) holds CR, LF or NUL")
        }
        // The addr-spec is canonical: parsing it again gives itself.
        do {
            let again = try EmailAddress(parsing: a.address)
            if again.address != a.address || again.displayName != nil { problems.append("reparsed as \(again)") }
        } catch {
            problems.append("its own addr-spec does not parse: \(error)")
        }
        // In a header: one logical line of printable ASCII that parses back to the same address.
        let header = MessageComposer.encodeMailboxes([a])
        let lines = header.components(separatedBy: "\r\n")
        if !header.unicodeScalars.allSatisfy({ (0x20...0x7E).contains($0.value) || $0 == "\r" || $0 == "\n" || $0 == "\t" }) {
            problems.append("mailbox header \(header.debugDescription) is not printable ASCII")
        }
        if lines.dropFirst().contains(where: { $0.first != " " }) { problems.append("mailbox header breaks the field: \(header.debugDescription)") }
        if lines.contains(where: { $0.utf8.count > 990 }) { problems.append("mailbox header line too long") }
        let unfolded = lines.joined()
        if let back = try? EmailAddress(parsing: unfolded) {
            if back.address != a.address { problems.append("mailbox header reads back as \(back.address)") }
        } else {
            problems.append("mailbox header \(unfolded.debugDescription) does not parse back")
        }
        return problems
    }

    @Test func theParserAcceptsOnlyWhatIsSafeAndSaysWhyElse() {
        var accepted = 0
        let ran = Property.check("EmailAddress(parsing:)", count: 6000, seconds: 4) { g in
            let text = g.chance(0.6) ? g.address() : g.hostileText(10, max: 300)
            g.note("text", text)
            do {
                let a = try EmailAddress(parsing: text)
                accepted += 1
                return Self.check(a)
            } catch {
                return "\(error)".isEmpty || !(error is EmailAddressError) ? ["not a clean EmailAddressError: \(error)"] : []
            }
        }
        // Relative to the cases run: a loaded machine runs fewer within the time bound.
        #expect(accepted * 40 > ran, "too few addresses accepted (\(accepted) of \(ran)) to say much")
    }

    @Test func aDisplayNameGivenApartIsCheckedToo() {
        Property.check("EmailAddress(address:displayName:)", count: 3000, seconds: 3) { g in
            let address = g.chance(0.7) ? "\(g.pick(Gen.validLocals))@\(g.pick(Gen.validDomains))" : g.address()
            let name = g.hostileText(8, max: 200)
            g.note("address", address)
            g.note("name", name)
            guard let a = try? EmailAddress(address: address, displayName: name) else { return [] }
            return Self.check(a)
        }
    }

    /// Long, many-labelled internationalized names are refused quickly, not after quadratic work.
    @Test func hugeDomainsAreRefusedWithoutStalling() {
        let label = String(String.UnicodeScalarView((0x4E00..<0x4E00 + 40_000).compactMap(Unicode.Scalar.init)))
        let start = Date()
        #expect(throws: EmailAddressError.self) { try EmailAddress(parsing: "a@\(label).com") }
        #expect(throws: IDNAError.self) { try IDNA.toASCII(label) }
        #expect(Date().timeIntervalSince(start) < 1, "took \(Date().timeIntervalSince(start)) s")
    }
}

@Suite struct DKIMCanonicalProperties {
    static func isWSP(_ b: UInt8) -> Bool { b == 32 || b == 9 }

    /// RFC 6376 §3.4.4 read literally, slowly: the reference the one-pass hasher must match.
    static func referenceBody(_ bytes: [UInt8]) -> [UInt8] {
        var lines: [[UInt8]] = []
        var current: [UInt8] = []
        var i = 0
        while i < bytes.count {
            if bytes[i] == 13, i + 1 < bytes.count, bytes[i + 1] == 10 {
                lines.append(current)
                current = []
                i += 2
            } else {
                current.append(bytes[i])
                i += 1
            }
        }
        if !current.isEmpty { lines.append(current) }
        lines = lines.map { line in
            var out: [UInt8] = []
            var pending = false
            for b in line {
                if isWSP(b) {
                    pending = true
                } else {
                    if pending { out.append(32) }
                    pending = false
                    out.append(b)
                }
            }
            return out
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        return lines.flatMap { $0 + [13, 10] }
    }

    static func body(_ g: inout Gen) -> [UInt8] {
        let pieces: [[UInt8]] = [[32], [9], [13, 10], [13], [10], [97], [98], [0xC3, 0xA9], [0], [32, 32, 32], [13, 10, 13, 10]]
        let count = g.chance(0.03) ? g.int(20_000...50_000) : g.length(60, max: 3000)
        var out: [UInt8] = []
        for _ in 0..<count { out += g.chance(0.9) ? g.pick(pieces) : g.bytes(1) }
        return out
    }

    /// Whitespace changes relaxed canonicalization must not see: runs made longer or of
    /// other blanks, blanks at line ends, more empty lines at the end.
    static func reblank(_ bytes: [UInt8], _ g: inout Gen) -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            if isWSP(bytes[i]) {
                while i < bytes.count, isWSP(bytes[i]) { i += 1 }
                for _ in 0..<g.int(1...3) { out.append(g.chance(0.5) ? 32 : 9) }
                continue
            }
            if bytes[i] == 13, i + 1 < bytes.count, bytes[i + 1] == 10, g.chance(0.3) {
                out += g.chance(0.5) ? [32] : [9, 32]
            }
            out.append(bytes[i])
            i += 1
        }
        if g.chance(0.5) { out += Array(repeating: [13, 10], count: g.int(1...4)).flatMap { $0 } }
        return out
    }

    @Test func theBodyHashIsTheRFCsAndIgnoresWhitespaceChanges() {
        Property.check("relaxed body", count: 2000, seconds: 5) { g in
            let body = Self.body(&g)
            g.note("body", body.count < 400 ? String(decoding: body, as: UTF8.self) : "\(body.count) bytes")
            var problems: [String] = []
            let hash = Canonical.relaxedBodyHash(body[...])
            if hash != SHA256.hash(data: Self.referenceBody(body)) { problems.append("differs from the reference") }
            let variant = Self.reblank(body, &g)
            // Blanks before a CRLF that ends a line: the reference's CRLF split must still see it.
            if Self.referenceBody(variant) == Self.referenceBody(body), Canonical.relaxedBodyHash(variant[...]) != hash {
                problems.append("whitespace changed the hash: \(String(decoding: variant.prefix(200), as: UTF8.self).debugDescription)")
            }
            // As the hasher is fed: from the middle of an array too.
            let padded = [UInt8](repeating: 120, count: 7) + body
            if Canonical.relaxedBodyHash(padded[7...]) != hash { problems.append("a slice hashes differently") }
            return problems
        }
    }

    static func field(_ g: inout Gen) -> [UInt8] {
        let nameAlphabet = Array("abcXYZ-_0".utf8)
        var raw: [UInt8] = (0..<g.int(1...20)).map { _ in g.pick(nameAlphabet) }
        if g.chance(0.2) { raw.insert(contentsOf: g.pick([[32], [9], [32, 9]]), at: g.int(0...raw.count)) }
        if g.chance(0.95) { raw.append(58) }
        let pieces: [[UInt8]] = [[32], [9], [13, 10, 32], [13, 10, 9], [13], [10], [58], [97], [66], [0xE2, 0x82, 0xAC], [61, 63], [0]]
        for _ in 0..<g.length(30, max: 600) { raw += g.chance(0.9) ? g.pick(pieces) : g.bytes(1) }
        return raw
    }

    @Test func relaxedHeadersAreIdempotentAndBlind() {
        Property.check("relaxed header", count: 5000, seconds: 4) { g in
            let raw = Self.field(&g)
            g.note("field", String(decoding: raw, as: UTF8.self))
            let out = Canonical.relaxedHeader(raw[...])
            var problems: [String] = []
            guard out.suffix(2) == [13, 10] else { return ["no final CRLF"] }
            let content = out.dropLast(2)
            // A line without a colon is no field: canonicalization leaves it alone.
            guard let colon = raw.firstIndex(of: 58) else { return problems }
            if content.contains(13) || content.contains(10) { problems.append("CR or LF inside the canonical field") }
            if content.contains(9) { problems.append("a tab survived") }
            let value = content[(content.firstIndex(of: 58)! + 1)...]
            if value.first == 32 || value.last == 32 { problems.append("blank at an end of the value") }
            if zip(value, value.dropFirst()).contains(where: { $0 == 32 && $1 == 32 }) { problems.append("a run of blanks") }
            if Canonical.relaxedHeader(content) != out { problems.append("not idempotent") }
            // Case of the name, blanks around the colon, other blank runs and folding in the value.
            var variant: [UInt8] = raw[..<colon].map { b in (97...122).contains(b) && g.chance(0.5) ? b - 32 : b }
            if g.chance(0.5) { variant += [32, 9] }
            variant.append(58)
            if g.chance(0.5) { variant += [32, 32] }
            var i = colon + 1
            while i < raw.count {
                if Self.isWSP(raw[i]) {
                    while i < raw.count, Self.isWSP(raw[i]) { i += 1 }
                    variant += g.pick([[32], [9], [32, 32], [13, 10, 32], [13, 10, 9, 9]])
                    continue
                }
                variant.append(raw[i])
                i += 1
            }
            if g.chance(0.5) { variant += [9, 32] }
            if Canonical.relaxedHeader(variant[...]) != out {
                problems.append("blind to blanks no more: \(String(decoding: variant, as: UTF8.self).debugDescription)")
            }
            return problems
        }
    }

    @Test func headerFieldsOfAnyBytesStayInBounds() {
        Property.check("HeaderFields.parse", count: 4000, seconds: 3) { g in
            let pieces: [[UInt8]] = [[13, 10], [13, 10, 13, 10], [13, 10, 32], [13], [10], [58], [32], [65], [0]]
            var bytes: [UInt8] = []
            for _ in 0..<g.length(40, max: 2000) { bytes += g.chance(0.85) ? g.pick(pieces) : g.bytes(1) }
            g.note("bytes", bytes)
            let (fields, bodyStart) = HeaderFields.parse(bytes)
            var problems: [String] = []
            if !(0...bytes.count).contains(bodyStart) { problems.append("body starts at \(bodyStart) of \(bytes.count)") }
            var last = 0
            for field in fields {
                if field.raw.startIndex < last || field.raw.endIndex > bodyStart || field.raw.isEmpty {
                    problems.append("field \(field.raw.startIndex)..<\(field.raw.endIndex) out of order or bounds")
                }
                last = field.raw.endIndex
                // One field each: a CRLF inside is always a fold.
                for j in field.raw.indices.dropLast(2) where bytes[j] == 13 && bytes[j + 1] == 10 && !Self.isWSP(bytes[j + 2]) {
                    problems.append("field holds an unfolded line break at \(j)")
                }
            }
            if Canonical.relaxedBodyHash(bytes[bodyStart...]) != SHA256.hash(data: Self.referenceBody(Array(bytes[bodyStart...]))) {
                problems.append("body hash differs from the reference")
            }
            return problems
        }
    }
}

@Suite struct ConfigFileProperties {
    static let sections: [String: [String]] = [
        "queue": ["backend", "path", "url", "password_file", "max_db_connections", "poll_interval_s", "lease_s", "retention_days"],
        "delivery": ["helo_name", "connect_timeout_s", "command_timeout_s", "default_max_connections", "idle_timeout_s",
                     "max_messages_per_connection", "retry_initial_s", "retry_max_s", "max_attempts", "cooldown_s",
                     "breaker_timeouts", "max_queue_lifetime_s", "allowed_networks"],
        "platform": ["host", "port", "security", "username", "password_file", "from_address", "from_name", "ca_file"],
        "secrets": ["key_file"], "dkim": ["keys_dir"], "log": ["level", "target"],
        "categories.report": ["priority", "ttl_s"], "categories.password_reset": ["priority", "ttl_s"],
    ]

    /// A TOML string literal of `text`, escaped as TOML requires.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F: out += String(format: "\\u%04X", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    static func value(_ g: inout Gen) -> String {
        switch g.int(0...12) {
        case 0: return quoted(g.pick(["postgres", "sqlite", "none", "tls", "starttls", "info", "journal", "stderr", "x", ""]))
        case 1: return quoted(g.hostileText(6, max: 80))
        case 2: return quoted(g.pick(["postgres://u@h:5432/db", "postgres://u:pw@h/db", "postgres://u@h:99999/db", "postgres://@/",
                                      "postgres://u@[::1/db", "postgres://u@h/db?sslmode=bogus", "mysql://u@h/db", "postgres://u@h/a/b",
                                      "a@example.com", "Name <a@example.com>", "127.0.0.0/8", "::1/129", "10.0.0.0/-1", "1.2.3.4/"]))
        case 3: return "\(g.pick([0, 1, -1, 3, 100, 101, 65535, 65536, Int.max, Int.min, 432_000]))"
        case 4: return g.pick(["nan", "+nan", "inf", "-inf", "1e300", "-0.0", "0.5", "1e-300", "3.0", "1_000.5"])
        case 5: return g.pick(["true", "false"])
        case 6: return "[" + (0..<g.int(0...3)).map { _ in quoted(g.pick(["127.0.0.0/8", "fd00::/8", "x", "10.0.0.1"])) }.joined(separator: ", ") + "]"
        case 7: return "[1, \"a\", 2.5]"
        case 8: return "{ a = 1, b = \"c\" }"
        case 9: return g.pick(["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"])
        case 10: return "'" + g.printableText(4, max: 40).replacingOccurrences(of: "'", with: "") + "'"
        case 11: return "99999999999999999999"
        default: return String(repeating: "[", count: g.int(1...300)) + String(repeating: "]", count: g.int(0...300))
        }
    }

    static func document(_ g: inout Gen) -> String {
        var lines: [String] = []
        for _ in 0..<g.int(0...5) {
            let section: String
            switch g.int(0...9) {
            case 0: section = g.pick(["bogus", "categories.BAD NAME", "categories.\(String(repeating: "x", count: 70))", "categories",
                                      "queue.sub", "\"quo\\u0000ted\"", "api"])
            default: section = g.pick(Array(sections.keys))
            }
            lines.append(g.chance(0.05) ? "[[\(section)]]" : "[\(section)]")
            for _ in 0..<g.int(0...6) {
                let key = g.chance(0.85) ? g.pick(sections[section] ?? ["x"]) : g.pick(["unknown_key", quoted(g.hostileText(3, max: 10)), "a.b", "priority"])
                lines.append("\(key) = \(value(&g))")
            }
        }
        if g.chance(0.1) { lines.insert("top_level = 1", at: 0) }
        var text = lines.joined(separator: "\n")
        // Mutations of the text itself: what a bad edit or a truncated copy leaves.
        if g.chance(0.3) {
            var characters = Array(text)
            for _ in 0..<g.int(1...4) {
                let at = g.int(0...characters.count)
                switch g.int(0...2) {
                case 0: if at < characters.count { characters.remove(at: at) }
                case 1: characters.insert(contentsOf: Array(g.pick(Gen.hostileFragments + ["=", "[", "]", "\"", "'", "#", "\n", "\\"])), at: at)
                default: characters = Array(characters.prefix(at))
                }
            }
            text = String(characters)
        }
        return text
    }

    @Test func anyFileIsAConfigurationOrAnErrorNamingTheKey() {
        var valid = 0
        var errors = 0
        let ran = Property.check("config file", count: 3000, seconds: 5) { g in
            let text = Self.document(&g)
            g.note("toml", text)
            do {
                _ = try MailrouteConfiguration(toml: text, baseDirectory: "/tmp/mailroute-property")
                valid += 1
                return []
            } catch let error as ConfigFileError {
                errors += 1
                let d = error.description
                let namesAKey = d.hasPrefix("invalid TOML at line ") || d.hasPrefix("unknown key ") || d.hasPrefix("[queue] url ")
                    || d.range(of: #"^[a-z_]+(\.[^ ]+)?[ :]"#, options: .regularExpression) != nil
                return namesAKey ? [] : ["ConfigFileError that names no key: \(d)"]
            } catch {
                return ["not a ConfigFileError: \(type(of: error)) \(error)"]
            }
        }
        #expect(valid * 60 > ran && errors * 60 > ran, "\(valid) valid, \(errors) refused of \(ran)")
    }
}


/// Inputs the properties found, kept as plain regression tests.
@Suite struct HostileInputRegressions {
    /// toml++ asserted (abort in debug; an optimizer assumption in release) on these.
    @Test(arguments: ["[\u{0C}delivery]", "[\u{85}dkim]", "[\u{2028}x]", "[\u{A0}x]", "a\u{A0}= 1", "a = \"\u{85}\"", "a = 1\rb = 2",
                      "[=log]", "[[=x]]", "[\n", "[ .a]", "[\t\t=]"])
    func configTextTOMLCannotTakeIsRefusedNamingTheLine(_ text: String) {
        do {
            _ = try MailrouteConfiguration(toml: text, baseDirectory: "/tmp")
            Issue.record("accepted \(text.debugDescription)")
        } catch {
            #expect("\(error)".hasPrefix("invalid TOML at line 1"), "\(error)")
        }
    }

    @Test func aByteOrderMarkAndUnicodeInStringsAndCommentsAreFine() throws {
        let settings = try MailrouteConfiguration(
            toml: "\u{FEFF}# Zoë's relay — ünïcode\n[platform]\nfrom_name = \"Zoë ✓\"\nhost = '例え.テスト'\n[log]\nlevel = \"\"\"\ninfo\"\"\"\n",
            baseDirectory: "/tmp")
        #expect(settings.platform.fromName == "Zoë ✓")
    }
}

/// The composer and parser inputs the properties found, one test each.
@Suite struct ComposerRegressions {
    static let identity = SenderIdentity(address: "main@acme.test", name: "Acme", replyTo: nil)

    static func compose(_ configure: (inout MessageRecord) -> Void, attachments: [AttachmentRecord] = []) throws -> [UInt8] {
        var row = MessageRecord(category: "report", rcptTo: #"["to@example.com"]"#, subject: "Hi")
        row.id = 1
        row.textBody = "Body"
        configure(&row)
        return try MessageAssembler.assemble(row, attachments: attachments, identity: identity).composed.bytes
    }

    static func expectSafe(_ bytes: [UInt8], extras: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) {
        let problems = Wire.problems(bytes, extras: extras)
        #expect(problems.isEmpty, "\(problems)", sourceLocation: sourceLocation)
    }

    /// Words under 900 octets each went on one line however many there were: 3,522 octets.
    @Test func aLongSubjectOfShortWordsIsFoldedAndReadsBack() throws {
        let subject = String(repeating: "ab ", count: 1200) + "end"
        let bytes = try Self.compose { $0.subject = subject }
        Self.expectSafe(bytes)
        let field = try #require(Wire.headerFields(bytes).first { $0.name == "Subject" })
        #expect(field.value == subject, "unfolding gives the subject back")
    }

    /// A display name of plain atoms went as it was, however long; one with a control
    /// character went into a quoted string with the control in it.
    @Test func longOrControlDisplayNamesAreEncoded() throws {
        let long = String(repeating: "Name ", count: 400)
        Self.expectSafe(try Self.compose { $0.rcptTo = jsonArray(["\(long)<a@example.com>", "Bell\u{7} <b@example.com>"]) })
    }

    /// `"x\r\nBcc: …"@example.com`: CRLF is one Character, which counted as ASCII and as
    /// neither CR nor LF, so it went into the To header and the RCPT command.
    @Test func aQuotedLocalPartCannotCarryALineBreak() throws {
        for text in ["\"x\r\nBcc: e@attacker.test\"@example.com", "Name\r\n <a@example.com>", "\"a\u{1}b\"@example.com",
                     "\"tab\tbed\"@example.com", "\"a\\\"@example.com"] {
            #expect(throws: EmailAddressError.self, "\(text.debugDescription)") { try EmailAddress(parsing: text) }
        }
        #expect(throws: InvalidMessage.self) {
            try Self.compose { $0.rcptTo = jsonArray(["\"x\r\nBcc: e@attacker.test\"@example.com"]) }
        }
        #expect(throws: EmailAddressError.self) { try EmailAddress(address: "a@example.com", displayName: "x\r\nBcc: y") }
        // Still fine: escapes and specials inside quotes, and a "<" in a quoted local part.
        #expect(try EmailAddress(parsing: "\"a\\\"b\"@example.com").address == "\"a\\\"b\"@example.com")
        #expect(try EmailAddress(parsing: "Name <\"a<b\"@example.com>").address == "\"a<b\"@example.com")
    }

    /// 255 emoji made one line of 1,656 octets in Content-Type and Content-Disposition; a
    /// letter with 2,000 combining marks one encoded word of 5,000.
    @Test func longFileNamesAndGraphemesFoldInsideTheirWords() throws {
        let attachment = AttachmentRecord(id: 1, messageId: 1, filename: String(repeating: "😀", count: 255), contentType: "application/pdf", content: Data("%PDF".utf8))
        Self.expectSafe(try Self.compose({ _ in }, attachments: [attachment]))
        let subject = "e" + String(repeating: "\u{301}", count: 2000)
        let bytes = try Self.compose { $0.subject = subject }
        Self.expectSafe(bytes)
        #expect(Wire.decodeUnstructured(try #require(Wire.headerFields(bytes).first { $0.name == "Subject" }).value) == subject)
    }

    @Test func whatCannotFitALineIsInvalid() {
        #expect(throws: InvalidMessage.self) { try Self.compose { $0.headers = "{\"X-\(String(repeating: "N", count: 1000))\": \"v\"}" } }
        let typeTooLong = AttachmentRecord(id: 1, messageId: 1, filename: "a.bin", contentType: "application/" + String(repeating: "x", count: 1500), content: Data())
        #expect(throws: InvalidMessage.self) { try Self.compose({ _ in }, attachments: [typeTooLong]) }
        let nameTooLong = AttachmentRecord(id: 1, messageId: 1, filename: String(repeating: "a", count: 2000), contentType: "text/plain", content: Data())
        #expect(throws: InvalidMessage.self) { try Self.compose({ _ in }, attachments: [nameTooLong]) }
        #expect(throws: EmailAddressError.self) { try EmailAddress(parsing: "a@[" + String(repeating: "1", count: 5000) + "]") }
    }

    /// Deeply nested JSON where a list or an object belongs: a clean refusal, not a stack overflow.
    @Test func deeplyNestedJSONIsRefusedCleanly() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: InvalidMessage.self) { try Self.compose { $0.rcptTo = deep } }
        #expect(throws: InvalidMessage.self) { try Self.compose { $0.cc = "[" + deep + "]" } }
        #expect(throws: InvalidMessage.self) { try Self.compose { $0.headers = "{\"X-A\": " + deep + "}" } }
    }

    /// A reason quotes the row; a row can say megabytes.
    @Test func reasonsAreClipped() {
        do {
            _ = try Self.compose { $0.rcptTo = jsonArray([String(repeating: "x", count: 1_000_000)]) }
            Issue.record("composed")
        } catch {
            #expect("\(error)".count < 500)
        }
    }

    /// A bare CR in a header ended the parse: everything after it was one field, and the body
    /// was hashed as empty.
    @Test func dkimHeaderParsingStepsOverABareCR() {
        let message = Array("A: x\ry\r\nB: z\r\n\r\nbody\r\n".utf8)
        let (fields, bodyStart) = HeaderFields.parse(message)
        #expect(fields.map(\.lowercasedName) == ["a", "b"])
        #expect(String(decoding: message[bodyStart...], as: UTF8.self) == "body\r\n")
        #expect(Canonical.relaxedHeader(Array("Sub\r\n ject: v".utf8)[...]) == Array("subject:v\r\n".utf8))
    }
}
