/// One mailbox, parsed per RFC 5322 (`a@x.com`, `Name <a@x.com>`, `"Last, First" <a@x.com>`),
/// never by splitting on commas. The result is safe to put in a header and an SMTP envelope:
/// an internationalized domain is stored in its punycode form.
public struct EmailAddress: Sendable, Hashable, CustomStringConvertible {
    /// The addr-spec, as sent in MAIL FROM / RCPT TO.
    public let address: String
    /// The display name, unquoted; nil when none was given.
    public let displayName: String?

    public init(address: String, displayName: String? = nil) throws(EmailAddressError) {
        let parsed = try EmailAddress(parsing: address)
        guard parsed.displayName == nil else { throw EmailAddressError("\"\(address)\" is not a bare address") }
        // By scalar: CRLF is one Character, equal to neither "\r" nor "\n".
        if let displayName, displayName.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" || $0 == "\0" }) {
            throw EmailAddressError("a display name may not contain CR, LF or NUL")
        }
        self.address = parsed.address
        self.displayName = displayName.flatMap { $0.isEmpty ? nil : $0 }
    }

    public init(parsing text: String) throws(EmailAddressError) {
        if text.unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" || $0 == "\0" }) {
            throw EmailAddressError("an address may not contain CR, LF or NUL")
        }
        let trimmed = text.trimmingSpaces
        guard !trimmed.isEmpty else { throw EmailAddressError("empty address") }

        if trimmed.hasSuffix(">") {
            guard let open = Self.angleOpen(trimmed) else {
                throw EmailAddressError("\"\(text)\": unbalanced angle brackets")
            }
            let spec = String(trimmed[trimmed.index(after: open)..<trimmed.index(before: trimmed.endIndex)])
            let phrase = String(trimmed[..<open]).trimmingSpaces
            self.address = try Self.validateAddrSpec(spec, original: text)
            self.displayName = try phrase.isEmpty ? nil : Self.parsePhrase(phrase, original: text)
        } else {
            self.address = try Self.validateAddrSpec(trimmed, original: text)
            self.displayName = nil
        }
    }

    public var domain: String {
        String(address[address.index(after: address.lastIndex(of: "@")!)...])
    }

    public var description: String {
        guard let displayName else { return address }
        return "\(displayName) <\(address)>"
    }

    // MARK: - Grammar

    /// The "<" that opens the angle-addr: the first outside the display name's quoted strings
    /// (`"a <b>" <x@y>`). Not the last: a quoted local part may hold one (`Name <"a<b"@y>`).
    private static func angleOpen(_ text: String) -> String.Index? {
        var inQuotes = false
        var escaped = false
        for index in text.indices {
            let c = text[index]
            if escaped {
                escaped = false
            } else if inQuotes && c == "\\" {
                escaped = true
            } else if c == "\"" {
                inQuotes.toggle()
            } else if !inQuotes && c == "<" {
                return index
            }
        }
        return nil
    }

    private static let atext: Set<Character> = Set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")

    private static func validateAddrSpec(_ spec: String, original: String) throws(EmailAddressError) -> String {
        guard let at = spec.lastIndex(of: "@") else {
            throw EmailAddressError("\"\(original)\" has no @")
        }
        let local = String(spec[..<at])
        let domain: String
        do {
            domain = try IDNA.toASCII(String(spec[spec.index(after: at)...]))
        } catch {
            throw EmailAddressError("\"\(original)\": \(error)")
        }
        guard !local.isEmpty else { throw EmailAddressError("\"\(original)\" has an empty local part") }
        guard local.utf8.count <= 64 else { throw EmailAddressError("\"\(original)\": local part longer than 64 octets") }
        if local.hasPrefix("\"") {
            guard local.utf8.count >= 2, local.hasSuffix("\""), isQuotedContent(local.utf8.dropFirst().dropLast())
            else { throw EmailAddressError("\"\(original)\": malformed quoted local part") }
        } else {
            guard local.utf8.allSatisfy({ $0 < 0x80 }) else {
                throw EmailAddressError("\"\(original)\": a non-ASCII local part needs SMTPUTF8, which Mailroute does not use")
            }
            let atoms = local.split(separator: ".", omittingEmptySubsequences: false)
            guard atoms.allSatisfy({ !$0.isEmpty && $0.allSatisfy { atext.contains($0) } }) else {
                throw EmailAddressError("\"\(original)\": invalid character or dot in the local part")
            }
        }
        try validateDomain(domain, original: original)
        return "\(local)@\(domain)"
    }

    /// RFC 5321 qtextSMTP and quoted-pairSMTP: printable ASCII and space, `"` and `\\` only
    /// escaped. Checked by byte: a Character such as CRLF counts as ASCII, and would have put a
    /// line break into the envelope and the To header.
    private static func isQuotedContent(_ bytes: Substring.UTF8View.SubSequence) -> Bool {
        var escaped = false
        for b in bytes {
            guard (0x20...0x7E).contains(b) else { return false }
            if escaped {
                escaped = false
            } else if b == UInt8(ascii: "\\") {
                escaped = true
            } else if b == UInt8(ascii: "\"") {
                return false
            }
        }
        return !escaped
    }

    private static func validateDomain(_ domain: String, original: String) throws(EmailAddressError) {
        guard !domain.isEmpty else { throw EmailAddressError("\"\(original)\" has an empty domain") }
        guard domain.utf8.count <= 253 else { throw EmailAddressError("\"\(original)\": domain longer than 253 octets") }
        if domain.hasPrefix("[") {
            guard domain.hasSuffix("]"), domain.count > 2,
                domain.dropFirst().dropLast().allSatisfy({ $0.isASCII && ($0.isHexDigit || $0 == "." || $0 == ":" || $0.isLetter) })
            else { throw EmailAddressError("\"\(original)\": malformed address literal") }
            return
        }
        guard domain.utf8.count <= 253 else { throw EmailAddressError("\"\(original)\": domain longer than 253 octets") }
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.allSatisfy(DNSName.isLDH) else { throw EmailAddressError("\"\(original)\": invalid domain \"\(domain)\"") }
    }

    /// A display name: words, or quoted strings with backslash escapes.
    private static func parsePhrase(_ phrase: String, original: String) throws(EmailAddressError) -> String {
        var result = ""
        var iterator = phrase.makeIterator()
        var inQuotes = false
        while let c = iterator.next() {
            if inQuotes {
                switch c {
                case "\\":
                    guard let escaped = iterator.next() else {
                        throw EmailAddressError("\"\(original)\": dangling backslash in the display name")
                    }
                    result.append(escaped)
                case "\"": inQuotes = false
                default: result.append(c)
                }
            } else {
                switch c {
                case "\"": inQuotes = true
                case "<", ">", "@", ",", ";", ":", "[", "]", "\\":
                    throw EmailAddressError("\"\(original)\": \"\(c)\" in a display name must be quoted")
                default: result.append(c)
                }
            }
        }
        guard !inQuotes else { throw EmailAddressError("\"\(original)\": unterminated quote in the display name") }
        let name = result.trimmingSpaces
        return name
    }
}

public struct EmailAddressError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
