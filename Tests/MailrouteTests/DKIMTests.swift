import Crypto
import Foundation
import Testing
import _CryptoExtras

@testable import MailrouteCore

@Suite struct IDNATests {
    // RFC 3492 §7.1 samples and well-known names.
    @Test(arguments: [
        ("bücher", "bcher-kva"),
        ("münchen", "mnchen-3ya"),
        ("他们为什么不说中文", "ihqwcrb4cv8a8dqg056pqjye"),
        ("почемужеонинеговорятпорусски", "b1abfaaepdrnnbgefbadotcwatmq2g4l"),
    ])
    func punycode(label: String, encoded: String) {
        #expect(Punycode.encode(Array(label.unicodeScalars)) == encoded)
    }

    @Test func domainsBecomeASCII() throws {
        #expect(try IDNA.toASCII("Bücher.DE") == "xn--bcher-kva.de")
        #expect(try IDNA.toASCII("例え。テスト") == "xn--r8jz45g.xn--zckzah")
        #expect(try IDNA.toASCII("example.com") == "example.com")
        // NFD input (u + combining diaeresis) encodes like NFC.
        #expect(try IDNA.toASCII("bu\u{0308}cher.de") == "xn--bcher-kva.de")
    }

    @Test func symbolsAreRefusedWithTheCharacterNamed() {
        #expect(throws: IDNAError.self) { try IDNA.toASCII("☃.com") }
        do {
            _ = try IDNA.toASCII("bü€her.de")
        } catch {
            #expect(error.description.contains("U+20AC"))
        }
    }
}

@Suite struct DKIMCanonicalizationTests {
    // RFC 6376 §3.4.5.
    @Test func relaxedHeaderExample() {
        #expect(Canonical.relaxedHeader(Array("A: X".utf8)[...]) == Array("a:X\r\n".utf8))
        #expect(Canonical.relaxedHeader(Array("B : Y\t\r\n\tZ  ".utf8)[...]) == Array("b:Y Z\r\n".utf8))
    }

    @Test func relaxedBodyExample() {
        let body = Array(" C \r\nD \t E\r\n\r\n\r\n".utf8)
        #expect(Canonical.relaxedBodyHash(body[...]) == SHA256Hash.of(" C\r\nD E\r\n"))
    }

    @Test func relaxedBodyEdges() {
        #expect(Canonical.relaxedBodyHash([][...]) == SHA256Hash.of(""), "an empty body hashes as empty")
        #expect(Canonical.relaxedBodyHash(Array("\r\n\r\n".utf8)[...]) == SHA256Hash.of(""))
        #expect(Canonical.relaxedBodyHash(Array("a".utf8)[...]) == SHA256Hash.of("a\r\n"), "a final CRLF is added")
        #expect(Canonical.relaxedBodyHash(Array("a\r\n \r\nb  \r\n\t\r\n".utf8)[...]) == SHA256Hash.of("a\r\n\r\nb\r\n"))
        // Larger than the 64 KiB buffer the hasher is fed from, in content and in empty lines.
        let big = String(repeating: "x  y\t\r\n", count: 20_000)
        #expect(Canonical.relaxedBodyHash(Array(big.utf8)[...]) == SHA256Hash.of(String(repeating: "x y\r\n", count: 20_000)))
        let gap = "a\r\n" + String(repeating: "\r\n", count: 40_000) + "b\r\n\r\n"
        #expect(Canonical.relaxedBodyHash(Array(gap.utf8)[...]) == SHA256Hash.of("a\r\n" + String(repeating: "\r\n", count: 40_000) + "b\r\n"))
    }

    @Test func headerFieldsKeepFoldingAndFindTheBody() {
        let message = Array("From: a@x.com\r\nSubject: one\r\n two\r\nTo: b@y.com\r\n\r\nbody\r\n".utf8)
        let (fields, bodyStart) = HeaderFields.parse(message)
        #expect(fields.map(\.lowercasedName) == ["from", "subject", "to"])
        #expect(String(decoding: fields[1].raw, as: UTF8.self) == "Subject: one\r\n two")
        #expect(String(decoding: message[bodyStart...], as: UTF8.self) == "body\r\n")
    }
}

enum SHA256Hash {
    static func of(_ text: String) -> SHA256.Digest { SHA256.hash(data: Array(text.utf8)) }
}

@Suite struct DKIMKeyTests {
    /// RSA signs through OpenSSL: PKCS#1 v1.5 is deterministic, so its signature must be one
    /// that swift-crypto accepts for the same key, whichever PEM form the key came in.
    @Test func rsaSignaturesFromOpenSSLVerifyWithSwiftCrypto() throws {
        for pem in [try OpenSSLKeys.rsaPKCS1(), try OpenSSLKeys.rsaPKCS8()] {
            let key = try DKIMKey(pem: pem, domain: "example.com", selector: "a")
            let digest = SHA256.hash(data: Data("headers to sign".utf8))
            let signature = try key.sign(headerHash: digest)
            #expect(signature.count == 256)
            let publicKey = try _RSA.Signing.PublicKey(derRepresentation: Data(base64Encoded: key.publicKeyBase64)!)
            #expect(publicKey.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: digest, padding: .insecurePKCS1v1_5))
            let other = SHA256.hash(data: Data("other headers".utf8))
            #expect(!publicKey.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: other, padding: .insecurePKCS1v1_5))
        }
    }

    @Test func readsTheFormsOpenSSLWrites() throws {
        let pkcs1 = try DKIMKey(pem: OpenSSLKeys.rsaPKCS1(), domain: "Example.com", selector: "a")
        #expect(pkcs1.algorithm == .rsaSHA256 && pkcs1.bits == 2048 && pkcs1.domain == "example.com")
        let pkcs8 = try DKIMKey(pem: OpenSSLKeys.rsaPKCS8(), domain: "example.com", selector: "b")
        #expect(pkcs8.algorithm == .rsaSHA256 && pkcs8.bits == 2048)
        let ed = try DKIMKey(pem: OpenSSLKeys.ed25519(), domain: "example.com", selector: "c")
        #expect(ed.algorithm == .ed25519SHA256)
        #expect(ed.txtRecord.hasPrefix("v=DKIM1; k=ed25519; p=") && ed.publicKeyBase64.count == 44)
    }

    @Test func refusesKeysThatCannotSign() throws {
        func reason(_ pem: String) -> String {
            do {
                _ = try DKIMKey(pem: pem, domain: "example.com", selector: "s")
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(reason(try OpenSSLKeys.rsaPKCS1(bits: 768)).contains("under 1024 bits"))
        #expect(reason(try OpenSSLKeys.make("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem"))
            .contains("unsupported key algorithm 1.2.840.10045.2.1"))
        #expect(reason(try OpenSSLKeys.make("openssl genpkey -algorithm ed25519 -aes256 -pass pass:x -out key.pem")).contains("passphrase"))
        #expect(reason("hello").contains("no PEM block"))
        #expect(reason("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").contains("PKCS#8"))
    }

    @Test(arguments: DKIMAlgorithm.allCases)
    func generatedKeysReadBackAndPrintTheirRecord(algorithm: DKIMAlgorithm) throws {
        let (key, pem) = try DKIMKey.generate(domain: "example.com", selector: "mr2026", algorithm: algorithm)
        let again = try DKIMKey(pem: pem, domain: "example.com", selector: "mr2026")
        #expect(again.publicKeyBase64 == key.publicKeyBase64)
        #expect(key.dnsName == "mr2026._domainkey.example.com")
        let zone = key.zoneFileRecord
        #expect(zone.hasPrefix("mr2026._domainkey.example.com. IN TXT "))
        // Every TXT string at most 255 octets; joined they are the record.
        let strings = zone.split(separator: "\"").enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
        #expect(strings.allSatisfy { $0.utf8.count <= 255 })
        #expect(strings.joined() == key.txtRecord)
        if algorithm == .rsaSHA256 { #expect(strings.count == 2 && key.bits == 2048) }
    }
}

@Suite struct DKIMSigningTests {
    static let rsa = try! DKIMKey.generate(domain: "brand.example", selector: "rsa1", algorithm: .rsaSHA256).key
    static let ed = try! DKIMKey.generate(domain: "brand.example", selector: "ed1", algorithm: .ed25519SHA256).key
    static let records = DKIMVerifier.records([rsa, ed])

    static func message(subject: String = "Report", text: String = "Hello\n", html: String? = nil) throws -> [UInt8] {
        var m = OutgoingMessage(
            from: try EmailAddress(address: "news@brand.example", displayName: "Brand"),
            to: [try EmailAddress(parsing: "Jane <jane@example.org>")], subject: subject, textBody: text, htmlBody: html)
        m.cc = [try EmailAddress(parsing: "cc@example.org")]
        m.extraHeaders = [("List-Unsubscribe", "<https://brand.example/u/1>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
        return MessageComposer.compose(m).bytes
    }

    @Test func bothAlgorithmsVerifyWithDkimpy() throws {
        let signed = try DKIMSigner.sign(Self.message(), keys: [Self.rsa, Self.ed], now: Date())
        let report = try DKIMVerifier.verify(signed, records: Self.records)
        #expect(report.signatures.map(\.a) == ["rsa-sha256", "ed25519-sha256"])
        #expect(report.allPass, "\(report)")
        let h = report.signatures[0].h.split(separator: ":").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(h.filter { $0 == "from" }.count == 2, "from is over-signed")
        for name in ["to", "cc", "subject", "date", "message-id", "mime-version", "content-type", "list-unsubscribe", "list-unsubscribe-post"] {
            #expect(h.contains(name), "\(name) is signed")
        }
    }

    @Test func changesAfterSigningFailVerification() throws {
        let signed = try DKIMSigner.sign(Self.message(text: "Pay invoice 100\n"), keys: [Self.rsa], now: Date())
        let text = String(decoding: signed, as: UTF8.self)
        let tampered: [String: String] = [
            "body": text.replacingOccurrences(of: "invoice 100", with: "invoice 900"),
            "subject": text.replacingOccurrences(of: "Subject: Report", with: "Subject: Rep0rt"),
            "second From": text.replacingOccurrences(of: "MIME-Version:", with: "From: evil@attacker.example\r\nMIME-Version:"),
        ]
        #expect(try DKIMVerifier.verify(signed, records: Self.records).allPass)
        for (what, message) in tampered {
            #expect(message != text)
            #expect(try !DKIMVerifier.verify(Array(message.utf8), records: Self.records).allPass, "\(what) changed")
        }
    }

    @Test func relaxedCanonicalizationSurvivesRewrapping() throws {
        // What relaying MTAs do: re-fold a header, add trailing blanks at the end of the body.
        let signed = try DKIMSigner.sign(Self.message(), keys: [Self.ed], now: Date())
        let text = String(decoding: signed, as: UTF8.self)
            .replacingOccurrences(of: "Subject: Report", with: "Subject:\r\n   Report")
        #expect(try DKIMVerifier.verify(Array((text + "\r\n\r\n").utf8), records: Self.records).allPass)
    }

    @Test func noKeysLeavesTheMessageAlone() throws {
        let message = try Self.message()
        #expect(try DKIMSigner.sign(message, keys: [], now: Date()) == message)
    }

    @Test func theSignatureFieldKeepsLinesShort() throws {
        let signed = try DKIMSigner.sign(Self.message(), keys: [Self.rsa], now: Date(timeIntervalSince1970: 1_800_000_000))
        let head = String(decoding: signed, as: UTF8.self).components(separatedBy: "\r\n\r\n")[0]
        #expect(head.components(separatedBy: "\r\n").allSatisfy { $0.utf8.count <= 100 })
        #expect(head.contains("t=1800000000;"))
    }
}

@Suite struct DKIMKeyringTests {
    static func write(_ dir: URL, _ name: String, _ pem: String, mode: Int = 0o600, modified: Date? = nil) throws {
        let path = dir.appendingPathComponent(name).path
        try Data(pem.utf8).write(to: URL(fileURLWithPath: path))
        var attributes: [FileAttributeKey: Any] = [.posixPermissions: mode]
        if let modified { attributes[.modificationDate] = modified }
        try FileManager.default.setAttributes(attributes, ofItemAtPath: path)
    }

    @Test func picksTheNewestKeyPerAlgorithmAndFallsBackToTheParentDomain() throws {
        let dir = Paths.temporaryDirectory("keys")
        let old = try DKIMKey.generate(domain: "brand.example", selector: "old", algorithm: .rsaSHA256)
        let new = try DKIMKey.generate(domain: "brand.example", selector: "new", algorithm: .rsaSHA256)
        let ed = try DKIMKey.generate(domain: "brand.example", selector: "ed", algorithm: .ed25519SHA256)
        try Self.write(dir, "brand.example.old.pem", old.pem, modified: Date(timeIntervalSinceNow: -86400))
        try Self.write(dir, "brand.example.new.pem", new.pem, modified: Date())
        try Self.write(dir, "brand.example.ed.pem", ed.pem)
        try Self.write(dir, "README", "not a key")

        let ring = DKIMKeyring.load(directory: dir.path)
        #expect(ring.entries.count == 3)
        #expect(ring.signingKeys(for: "Brand.Example").map(\.selector) == ["new", "ed"])
        #expect(ring.signingKeys(for: "news.brand.example").map(\.domain) == ["brand.example", "brand.example"])
        #expect(ring.signingKeys(for: "other.example").isEmpty)
        #expect(ring.signingKeys(for: "example").isEmpty)
    }

    @Test func reportsBadFilesAndLoadsTheRest() throws {
        let dir = Paths.temporaryDirectory("keys")
        let good = try DKIMKey.generate(domain: "a.example", selector: "s1", algorithm: .ed25519SHA256)
        try Self.write(dir, "a.example.s1.pem", good.pem, mode: 0o644)
        try Self.write(dir, "nodomain.pem", good.pem)
        try Self.write(dir, "b.example.s1.pem", "garbage")
        let ring = DKIMKeyring.load(directory: dir.path)
        let byName = Dictionary(uniqueKeysWithValues: ring.entries.map { (URL(fileURLWithPath: $0.file).lastPathComponent, $0) })
        #expect(byName["a.example.s1.pem"]?.key != nil)
        #expect(byName["a.example.s1.pem"]?.warning?.contains("chmod 600") == true)
        #expect(byName["nodomain.pem"]?.key == nil)
        #expect(byName["b.example.s1.pem"]?.key == nil)
        #expect(ring.keys.count == 1)
    }

    @Test func aMissingDirectoryIsNoKeys() {
        let ring = DKIMKeyring.load(directory: "/nonexistent/dkim")
        #expect(!ring.directoryExists && ring.keys.isEmpty)
    }
}
