import Crypto
import Foundation
import Testing

@testable import MailrouteCore

@Suite struct EmailAddressTests {
    @Test(arguments: [
        ("a@example.com", "a@example.com", nil),
        ("Jane Doe <jane@example.com>", "jane@example.com", "Jane Doe"),
        (#""Doe, Jane" <jane@example.com>"#, "jane@example.com", "Doe, Jane"),
        (#""Say \"hi\"" <x@example.com>"#, "x@example.com", #"Say "hi""#),
        ("Zoë Ünicode <z@example.com>", "z@example.com", "Zoë Ünicode"),
        ("  first.last+tag@sub.example.co.uk  ", "first.last+tag@sub.example.co.uk", nil),
        // IDN domains leave as punycode: an envelope and a header without SMTPUTF8.
        ("Jörg <j@Bücher.de>", "j@xn--bcher-kva.de", "Jörg"),
        ("info@münchen.example", "info@xn--mnchen-3ya.example", nil),
    ] as [(String, String, String?)])
    func parses(input: String, address: String, name: String?) throws {
        let parsed = try EmailAddress(parsing: input)
        #expect(parsed.address == address)
        #expect(parsed.displayName == name)
    }

    @Test(arguments: [
        "", "no-at-sign", "@example.com", "a@", "a@@example.com", "a b@example.com", "a@exa mple.com",
        "a@example.com\r\nBcc: x@y.com", "Doe, Jane <jane@example.com>", "a..b@example.com", "a@-bad-.com",
        "jörg@example.com", "a@☃.com", "a@bü cher.de", "<a@example.com", "a@example.com>",
    ])
    func refuses(input: String) {
        #expect(throws: EmailAddressError.self) { try EmailAddress(parsing: input) }
    }
}

@Suite struct SecretTests {
    @Test func sealOpenRoundTripAndNoPlaintext() throws {
        let box = SecretBox(key: SymmetricKey(size: .bits256))
        let sealed = try box.seal("hunter2-very-secret")
        #expect(!String(decoding: sealed, as: UTF8.self).contains("hunter2"))
        #expect(try box.open(sealed) == "hunter2-very-secret")
        #expect(try box.seal("same") != box.seal("same"), "each seal has a fresh nonce")
    }

    @Test func anotherKeyCannotOpen() throws {
        let sealed = try SecretBox(key: SymmetricKey(size: .bits256)).seal("pw")
        #expect(throws: SecretError.wrongKey) { try SecretBox(key: SymmetricKey(size: .bits256)).open(sealed) }
    }

    @Test func keyFileIsPrivateAndNeverOverwritten() throws {
        let path = Paths.temporaryDirectory("key").appendingPathComponent("sub/mailroute.key").path
        try KeyFile.generate(at: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let before = FileManager.default.contents(atPath: path)
        #expect(throws: SecretError.keyFileExists(path)) { try KeyFile.generate(at: path) }
        #expect(FileManager.default.contents(atPath: path) == before)
        _ = try KeyFile.load(configured: path, environment: [:])
    }

    @Test func systemdCredentialWinsOverTheKeyFile() throws {
        let dir = Paths.temporaryDirectory("cred")
        try KeyFile.generate(at: dir.appendingPathComponent("mailroute.key").path)
        let other = Paths.temporaryDirectory("cred2").appendingPathComponent("k").path
        try KeyFile.generate(at: other)
        let sealed = try KeyFile.load(configured: other, environment: ["CREDENTIALS_DIRECTORY": dir.path]).seal("x")
        #expect(throws: SecretError.wrongKey) { try KeyFile.load(configured: other, environment: [:]).open(sealed) }
    }

    @Test func missingKeySaysWhereItLooked() {
        let error = #expect(throws: SecretError.self) {
            try KeyFile.load(configured: "/nonexistent/k", environment: ["CREDENTIALS_DIRECTORY": "/run/creds"])
        }
        #expect(error?.description.contains("/run/creds/mailroute.key") == true)
        #expect(error?.description.contains("/nonexistent/k") == true)
        #expect(error?.description.contains("key generate") == true)
    }

    @Test func badKeyFileIsRefused() throws {
        let path = Paths.temporaryDirectory("bad").appendingPathComponent("k").path
        try "not a key\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o600)  // private, or the mode is what is refused
        #expect(throws: SecretError.badKeyFile(path)) { try KeyFile.load(configured: path, environment: [:]) }
    }
}

/// `--host` as people write it (issue 9): Docker service names and `localhost` are hosts too.
@Suite struct HostNameTests {
    @Test(arguments: [
        ("localhost", "localhost"), ("mailhog", "mailhog"), ("SMTP.Example.COM", "smtp.example.com"),
        ("smtp.example.com.", "smtp.example.com"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[::1]", "::1"),
        ("[2001:DB8::25]", "2001:db8::25"), ("mail.bücher.de", "mail.xn--bcher-kva.de"), ("smtp-relay-1", "smtp-relay-1"),
    ])
    func accepts(input: String, normalized: String) throws {
        #expect(try DNSName.host(input) == normalized)
        #expect(try Validate.host(input) == normalized)
    }

    @Test(arguments: [
        ("smtp example.com", "is not a host name"), ("-bad-.example.com", "is not a host name"), ("1234", "IPv4"),
        ("999.1.1.1", "IPv4"), ("10.0.0", "IPv4"), ("::g", "IPv6"), ("[::1", "IPv6"), ("", "host name"),
        ("a..b.example", "is not a host name"), ("smtp.example.123", "is not a host name"),
    ])
    func refusesNamingTheValue(input: String, reason: String) {
        let error = #expect(throws: DNSNameError.self) { try DNSName.host(input) }
        #expect(error?.description.contains(reason) == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("\"\(input)\"") == true)
    }
}
