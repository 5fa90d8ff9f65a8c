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
