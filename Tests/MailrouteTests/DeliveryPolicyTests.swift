import Foundation
import Testing

@testable import MailrouteCore

/// The decisions, without I/O.
@Suite struct DeliveryPolicyTests {
    let retry = RetryPolicy(initialSeconds: 30, maxSeconds: 3600, maxAttempts: 10)

    @Test func backoffDoublesWithinJitterAndIsCapped() {
        #expect(retry.delay(afterAttempts: 1, random: 0) == 15)
        #expect(retry.delay(afterAttempts: 1, random: 0.999) < 30)
        #expect(retry.delay(afterAttempts: 2, random: 0) == 30)
        #expect(retry.delay(afterAttempts: 3, random: 0) == 60)
        #expect(retry.delay(afterAttempts: 9, random: 0) == 1800, "capped at retry_max_s")
        #expect(retry.delay(afterAttempts: 200, random: 1) == 3600)
    }

    func verdict(_ error: DeliveryError?, attempts: Int = 1, expires: Double? = nil, fallback: FallbackPolicy = .platform, viaPlatform: Bool = false)
        -> DeliveryVerdict
    {
        let result: Result<SendReport, DeliveryError> = error.map { .failure($0) } ?? .success(SendReport(reply: nil, refused: [], newConnection: true))
        return DeliveryPolicy.verdict(
            for: result, attemptsAfter: attempts, expiresAt: expires, now: 1000, fallback: fallback, viaPlatform: viaPlatform,
            retry: retry, random: 0)
    }

    let refused = DeliveryError(kind: .connectionFailed, text: "refused", isTemporary: false)
    let tempfail = DeliveryError(kind: .temporaryFailure, smtpCode: 451, text: "451 later", isTemporary: true)
    let rejected = DeliveryError(kind: .messageRejected, smtpCode: 554, text: "554 spam", isTemporary: false)

    @Test func theFailureTable() {
        #expect(verdict(nil) == .sent)
        #expect(verdict(refused) == .configurationFailed(fallback: true))
        #expect(verdict(refused, fallback: .none) == .configurationFailed(fallback: false))
        #expect(verdict(DeliveryError(kind: .authFailed, smtpCode: 535, text: "535", isTemporary: false)) == .configurationFailed(fallback: true))
        #expect(verdict(tempfail) == .deferred(until: 1015))
        #expect(verdict(rejected) == .failed)
        #expect(verdict(DeliveryError(kind: .recipientRejected, smtpCode: 550, text: "550", isTemporary: false)) == .failed)
    }

    @Test func theRelayFailingDefersRatherThanFallingBackAgain() {
        #expect(verdict(refused, viaPlatform: true) == .deferred(until: 1015))
    }

    @Test func triesAndTimeRunOut() {
        #expect(verdict(tempfail, attempts: 10) == .failed)
        #expect(verdict(tempfail, attempts: 1, expires: 1010) == .expired)
        #expect(verdict(tempfail, attempts: 1, expires: 2000) == .deferred(until: 1015))
    }

    @Test func aDownConfigurationWaitsForItsCooldown() {
        var config = SMTPConfigRecord(tenant: "t", name: "n", host: "h", fromAddress: "a@h.test")
        #expect(!DeliveryPolicy.isDown(config))
        config.status = .error
        config.errorKind = .recipientRejected
        #expect(!DeliveryPolicy.isDown(config), "a refused test recipient says nothing about the server")
        config.errorKind = .authFailed
        config.statusChangedAt = 1000
        #expect(DeliveryPolicy.isDown(config))
        #expect(!DeliveryPolicy.probeDue(config, now: 1100, cooldown: 300))
        #expect(DeliveryPolicy.probeDue(config, now: 1300, cooldown: 300))
    }

    @Test(arguments: [
        ("a@acme.test", ["acme.test"], [String](), true),
        ("A@ACME.TEST", ["acme.test"], [], true),
        ("a@mail.acme.test", ["acme.test"], [], false),
        ("a@mail.acme.test", ["mail.acme.test"], [], true),
        ("a@evil.test", ["acme.test"], [], false),
        ("ceo@other.test", ["acme.test"], ["ceo@other.test"], true),
        ("cfo@other.test", [], ["ceo@other.test"], false),
        ("anyone@anywhere.test", [], [], true),
        // Exact domains at the second and third level, neither covering the other.
        ("a@acme.test", ["mail.acme.test"], [], false),
        ("a@news.mail.acme.test", ["mail.acme.test"], [], false),
        ("a@notacme.test", ["acme.test"], [], false),
        // Either list authorizes; senders compare case-insensitively.
        ("CEO@Other.Test", ["acme.test"], ["ceo@other.test"], true),
        ("a@acme.test", ["acme.test"], ["ceo@other.test"], true),
        // IDN: the list holds punycode (as `config add` stores it), the row may hold either form.
        ("info@bücher.example", ["xn--bcher-kva.example"], [], true),
        ("info@xn--bcher-kva.example", ["bücher.example"], [], true),
    ])
    func senderAuthorization(address: String, domains: [String], senders: [String], expected: Bool) {
        #expect(SenderAuthorization.isAuthorized(address, domains: domains, senders: senders) == expected)
    }

    @Test func admissionTakesTheSmallerPriorityAndTheCategoryDefaults() {
        var config = SMTPConfigRecord(tenant: "acme", name: "vip", host: "h", fromAddress: "a@h.test")
        config.id = 1
        config.isDefault = true
        config.priority = 2
        let table = RoutingTable(configs: [config], routes: [])
        let settings = MailrouteConfiguration()
        func admit(_ category: String, _ priority: Int?, tenant: String? = "acme") -> Admission {
            Dispatcher.admission(
                for: AdmissionRow(id: 1, keys: RoutingKeys(tenant: tenant, category: category), priority: priority, sendAt: nil, expiresAt: nil, createdAt: 100),
                table: table, settings: settings)
        }
        #expect(admit("report", nil).effectivePriority == 2, "report is 4, the configuration 2")
        #expect(admit("report", 5).effectivePriority == 2)
        #expect(admit("password_reset", nil).effectivePriority == 1)
        #expect(admit("password_reset", nil).expiresAt == 3700, "one hour TTL")
        #expect(admit("report", nil, tenant: nil).effectivePriority == 4)
        #expect(admit("report", nil, tenant: nil).route == .platform)
        #expect(admit("newsletter", nil, tenant: nil).effectivePriority == 3)
    }
}

@Suite struct AssemblerTests {
    let identity = SenderIdentity(address: "news@acme.test", name: "Acme", replyTo: nil)

    func row(_ to: String = #"["a@example.com"]"#, headers: String? = nil) -> MessageRecord {
        var m = MessageRecord(category: "report", rcptTo: to, subject: "Hi")
        m.id = 1
        m.textBody = "x"
        m.headers = headers
        return m
    }

    @Test func bccIsInTheEnvelopeOnly() throws {
        var m = row(#"["a@example.com", "A@EXAMPLE.COM"]"#)
        m.bcc = #"["hidden@example.com"]"#
        let assembled = try MessageAssembler.assemble(m, attachments: [], identity: identity)
        #expect(assembled.recipients == ["a@example.com", "hidden@example.com"])
        #expect(!String(decoding: assembled.composed.bytes, as: UTF8.self).contains("hidden@"))
    }

    @Test(arguments: [
        #"["not an address"]"#, #"["a@example.com", 5]"#, #"["Evil <a@x.test>\r\nBcc: y@x.test"]"#,
    ])
    func badRecipientsAreInvalid(to: String) {
        #expect(throws: InvalidMessage.self) { try MessageAssembler.assemble(row(to), attachments: [], identity: identity) }
    }

    @Test(arguments: [#"{"Subject": "x"}"#, #"{"Content-Type": "text/evil"}"#, #"{"X-A": "1\nB: 2"}"#, #"{"Reply-To": "x@y.test"}"#])
    func headersCannotOverrideStructure(headers: String) {
        #expect(throws: InvalidMessage.self) { try MessageAssembler.assemble(row(headers: headers), attachments: [], identity: identity) }
    }

    @Test(arguments: [
        ("multipart/mixed; boundary=x", "cannot be multipart"), ("message/rfc822", "cannot be message"), ("pdf", "not type/subtype"),
        ("application/pdf\u{0}", "not type/subtype"), ("text/csv; charset=\"utf-8\"\u{1B}", "U+001B"),
    ])
    func attachmentTypesCannotReshapeTheMessage(contentType: String, reason: String) {
        let attachment = AttachmentRecord(messageId: 1, filename: "a.bin", contentType: contentType, content: Data([1]))
        #expect {
            try MessageAssembler.assemble(row(), attachments: [attachment], identity: identity)
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test func controlCharactersInTextThatBecomesAHeaderAreRefused() {
        var m = row()
        m.subject = "bell\u{07}"
        #expect(throws: InvalidMessage("subject contains the control character U+0007")) {
            try MessageAssembler.assemble(m, attachments: [], identity: identity)
        }
        m.subject = "tab\tis fine, and so is ✓"
        #expect(throws: Never.self) { try MessageAssembler.assemble(m, attachments: [], identity: identity) }
    }
}
