import Foundation

public struct DNSNameError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Names that go into DNS: a domain (an authorized domain, a DKIM signing domain), a DKIM
/// selector, and the label rule that address domains follow too.
public enum DNSName {
    /// A host name of at least two labels (`example.com`, `mail.example.com`), lowercased.
    /// Internationalized names are converted to their punycode (`xn--`) form.
    public static func domain(_ value: String) throws(DNSNameError) -> String {
        let ascii: String
        do {
            ascii = try IDNA.toASCII(value)
        } catch {
            throw DNSNameError("\"\(value)\": \(error)")
        }
        let labels = ascii.split(separator: ".", omittingEmptySubsequences: false)
        guard ascii.utf8.count <= 253, labels.count >= 2, labels.allSatisfy(isLDH) else {
            throw DNSNameError("\"\(value)\" is not a domain name like example.com")
        }
        return ascii.lowercased()
    }

    /// A host as people write it for an SMTP server: a name of one or more labels
    /// (`localhost`, `mailhog` in a compose file, `smtp.example.com`), an IPv4 literal, or an
    /// IPv6 literal with or without brackets. Names are lowercased and internationalized ones
    /// converted to punycode; IPv6 comes back without brackets. Which addresses may be reached
    /// is not decided here.
    public static func host(_ value: String) throws(DNSNameError) -> String {
        var text = value
        if text.hasPrefix("[") && text.hasSuffix("]") && text.count > 2 { text = String(text.dropFirst().dropLast()) }
        if text.contains(":") {
            guard isIPv6(text) else { throw DNSNameError("\"\(value)\" is not a valid IPv6 address") }
            return text.lowercased()
        }
        if !text.isEmpty && text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) {
            guard isIPv4(text) else { throw DNSNameError("\"\(value)\" is not a valid IPv4 address") }
            return text
        }
        let ascii: String
        do {
            ascii = try IDNA.toASCII(text.hasSuffix(".") ? String(text.dropLast()) : text)
        } catch {
            throw DNSNameError("\"\(value)\": \(error)")
        }
        let labels = ascii.split(separator: ".", omittingEmptySubsequences: false)
        // An all-digit last label would be read as a number by resolvers (RFC 3696 §2).
        guard ascii.utf8.count <= 253, labels.allSatisfy(isLDH), labels.last?.allSatisfy(\.isNumber) == false else {
            throw DNSNameError("\"\(value)\" is not a host name (like smtp.example.com or localhost) or an IP address")
        }
        return ascii.lowercased()
    }

    static func isIPv4(_ text: String) -> Bool {
        var address = in_addr()
        return inet_pton(AF_INET, text, &address) == 1
    }

    static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    /// Letters, digits and inner hyphens; no dots, since the file name ends `.SELECTOR.pem`.
    public static func selector(_ value: String) throws(DNSNameError) -> String {
        guard isLDH(value[...]) else {
            throw DNSNameError("selector \"\(value)\" must be letters, digits and hyphens (e.g. mr2026)")
        }
        return value
    }

    static func isLDH(_ label: Substring) -> Bool {
        (1...63).contains(label.utf8.count) && label.first != "-" && label.last != "-"
            && label.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D }
    }
}
