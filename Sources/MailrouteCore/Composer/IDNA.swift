import Foundation

public struct IDNAError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Internationalized domain names to their ASCII form (`bücher.de` → `xn--bcher-kva.de`),
/// so they can go into an SMTP envelope, a header and DNS without SMTPUTF8.
///
/// This is IDNA's core (NFC, lower case, Punycode per RFC 3492), not the whole UTS #46
/// mapping table: labels of letters, digits, combining marks and hyphens are converted, and
/// anything else (symbols, spaces, punctuation) is refused with a reason.
public enum IDNA {
    public static func toASCII(_ domain: String) throws(IDNAError) -> String {
        if domain.utf8.allSatisfy({ $0 < 0x80 }) { return domain }
        // Encoding never shortens a name, and Punycode's encoder is quadratic in a label's
        // length: what could not fit DNS's limits is refused before any work (a 40,000-letter
        // label held a delivery thread for minutes).
        guard domain.unicodeScalars.count <= 253 else { throw IDNAError("the name is longer than 253 characters") }
        // The full stops other scripts type are label separators too (UTS #46 §2.3).
        let normalized = domain.precomposedStringWithCanonicalMapping.lowercased()
            .replacingOccurrences(of: "\u{3002}", with: ".")
            .replacingOccurrences(of: "\u{FF0E}", with: ".")
            .replacingOccurrences(of: "\u{FF61}", with: ".")
        var labels: [String] = []
        for label in normalized.split(separator: ".", omittingEmptySubsequences: false) {
            if label.utf8.allSatisfy({ $0 < 0x80 }) {
                labels.append(String(label))
                continue
            }
            guard label.unicodeScalars.count <= 59 else { throw IDNAError("the label \"\(label.prefix(20))…\" is too long once encoded") }
            for scalar in label.unicodeScalars where !isAllowed(scalar) {
                throw IDNAError("\"\(scalar)\" (U+\(String(scalar.value, radix: 16, uppercase: true))) cannot be part of a domain name")
            }
            let encoded = "xn--" + Punycode.encode(Array(label.unicodeScalars))
            guard encoded.utf8.count <= 63 else { throw IDNAError("the label \"\(label)\" is too long once encoded") }
            labels.append(encoded)
        }
        return labels.joined(separator: ".")
    }

    private static func isAllowed(_ scalar: Unicode.Scalar) -> Bool {
        if scalar.isASCII {
            let v = scalar.value
            return (0x30...0x39).contains(v) || (0x61...0x7A).contains(v) || v == 0x2D
        }
        switch scalar.properties.generalCategory {
        case .lowercaseLetter, .uppercaseLetter, .titlecaseLetter, .otherLetter, .modifierLetter,
            .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber:
            return true
        default:
            return false
        }
    }
}

/// RFC 3492's encoder (the parameters are the RFC's).
enum Punycode {
    private static let base = 36, tMin = 1, tMax = 26, skew = 38, damp = 700

    static func encode(_ input: [Unicode.Scalar]) -> String {
        var output: [UInt8] = input.filter(\.isASCII).map { UInt8($0.value) }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append(UInt8(ascii: "-")) }
        var n = 0x80
        var delta = 0
        var bias = 72
        let codes = input.map { Int($0.value) }
        while handled < codes.count {
            let m = codes.filter { $0 >= n }.min()!
            delta += (m - n) * (handled + 1)
            n = m
            for c in codes {
                if c < n { delta += 1 }
                guard c == n else { continue }
                var q = delta
                var k = base
                while true {
                    let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                    if q < t { break }
                    output.append(digit(t + (q - t) % (base - t)))
                    q = (q - t) / (base - t)
                    k += base
                }
                output.append(digit(q))
                bias = adapt(delta, points: handled + 1, first: handled == basicCount)
                delta = 0
                handled += 1
            }
            delta += 1
            n += 1
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static func digit(_ d: Int) -> UInt8 {
        d < 26 ? UInt8(97 + d) : UInt8(22 + d)  // a-z, then 0-9
    }

    private static func adapt(_ delta: Int, points: Int, first: Bool) -> Int {
        var delta = first ? delta / damp : delta / 2
        delta += delta / points
        var k = 0
        while delta > ((base - tMin) * tMax) / 2 {
            delta /= base - tMin
            k += base
        }
        return k + (base - tMin + 1) * delta / (delta + skew)
    }
}
