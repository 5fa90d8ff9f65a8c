import Foundation
import Testing

@testable import MailrouteCore

@Suite struct QuotedPrintableTests {
    /// RFC 2045 §6.7 decoding, to check the encoder against.
    static func decode(_ encoded: String) -> [UInt8] {
        var out: [UInt8] = []
        let bytes = Array(encoded.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "=") {
                if bytes[i + 1] == 13 {
                    i += 3  // soft break
                } else {
                    out.append(UInt8(String(decoding: bytes[(i + 1)...(i + 2)], as: UTF8.self), radix: 16)!)
                    i += 3
                }
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return out
    }

    @Test func knownEncodings() {
        #expect(MessageComposer.quotedPrintable("a=b") == "a=3Db\r\n")
        #expect(MessageComposer.quotedPrintable("ça") == "=C3=A7a\r\n")
        #expect(MessageComposer.quotedPrintable("end \nx\t") == "end=20\r\nx=09\r\n", "blanks at a line end are encoded")
        #expect(MessageComposer.quotedPrintable("a\r\nb\rc\nd") == "a\r\nb\r\nc\r\nd\r\n", "CRLF, CR and LF each end a line")
        #expect(MessageComposer.quotedPrintable("") == "\r\n")
        #expect(MessageComposer.quotedPrintable(".leading dot") == ".leading dot\r\n")
    }

    @Test func randomTextRoundTripsWithShortLines() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("ab =\t\r\né€😀.-_~\u{7F}\u{0}")
        for _ in 0..<300 {
            let length = Int.random(in: 0..<400, using: &generator)
            let text = String((0..<length).map { _ in alphabet.randomElement(using: &generator)! })
            let encoded = MessageComposer.quotedPrintable(text)
            let lines = encoded.components(separatedBy: "\r\n").dropLast()
            #expect(lines.allSatisfy { $0.utf8.count <= 76 })
            #expect(encoded.utf8.allSatisfy { $0 == 9 || $0 == 10 || $0 == 13 || (32...126).contains($0) })
            let expected = text.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
                .replacingOccurrences(of: "\n", with: "\r\n") + "\r\n"
            #expect(Self.decode(encoded) == Array(expected.utf8), "\(text.debugDescription)")
        }
    }
}

@Suite struct DateHeaderTests {
    @Test(arguments: [
        (0.0, "Thu, 01 Jan 1970 00:00:00 +0000"),
        (1_795_434_584.9, "Mon, 23 Nov 2026 11:49:44 +0000"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
    ])
    func rfc5322(seconds: Double, expected: String) {
        #expect(MessageComposer.rfc5322Date(Date(timeIntervalSince1970: seconds)) == expected)
    }
}

@Suite struct MessageIDTests {
    /// Message-IDs and boundaries come from version 4 UUIDs made from the system generator.
    @Test func randomUUIDsAreVersion4AndDistinct() {
        let ids = (0..<2000).map { _ in MessageComposer.randomUUID().uuidString.lowercased() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(50) {
            let chars = Array(id)
            #expect(chars.count == 36 && chars[14] == "4", "\(id)")
            #expect("89ab".contains(chars[19]), "\(id)")
        }
    }
}
