import Foundation
import Testing

@testable import MailrouteCore

/// The engine's half of a send, without a server: what it says, what it makes of replies,
/// and that a failure maps as libcurl's own transfer's would.
@Suite struct SMTPTransactionTests {
    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    func feed(_ transaction: inout SMTPTransaction, _ reply: String, _ transcript: inout SMTPTranscript) -> SMTPTransaction.Event {
        transaction.receive(Array(reply.utf8), &transcript)
    }

    func classify(_ event: SMTPTransaction.Event, _ transcript: SMTPTranscript) throws -> DeliveryError {
        guard case .finished(.failed(let code, let message, let response)) = event else {
            throw TransactionTestError.notAFailure("\(event)")
        }
        return FailureClassifier.classify(curlCode: code, errorMessage: message, responseCode: response, transcript: transcript)
    }

    @Test func aMessageFromMailToQueued() {
        var transcript = SMTPTranscript()
        var t = SMTPTransaction(from: "a@acme.test", to: ["b@example.com"], message: Array("Subject: x\r\n\r\nhi\r\n".utf8), capabilities: .init())
        #expect(text(t.begin(&transcript)) == "MAIL FROM:<a@acme.test>\r\n")
        #expect(feed(&t, "250 2.1.0 Ok\r\n", &transcript) == .send(Array("RCPT TO:<b@example.com>\r\n".utf8)))
        #expect(feed(&t, "250 2.1.5 Ok\r\n", &transcript) == .send(Array("DATA\r\n".utf8)))
        #expect(feed(&t, "354 End data with <CR><LF>.<CR><LF>\r\n", &transcript) == .send(Array("Subject: x\r\n\r\nhi\r\n.\r\n".utf8)))
        #expect(feed(&t, "250 2.0.0 Ok: queued as ABC\r\n", &transcript) == .finished(.accepted))
        let report = SendReport(transcript, newConnection: false)
        #expect(report.reply?.line == "250 2.0.0 Ok: queued as ABC")
        #expect(report.refused.isEmpty)
        #expect(transcript.lastCommand == "DATA")
    }

    @Test func sizeAndSMTPUTF8AsTheServerOffersThem() {
        var ehlo = SMTPTranscript()
        ehlo.append(.server, chunk: "220 mx ESMTP")
        ehlo.append(.client, chunk: "EHLO mailroute.test")
        ehlo.append(.server, chunk: "250-mx\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 SMTPUTF8")
        let capabilities = SMTPTransaction.Capabilities(ehlo)
        #expect(capabilities == .init(size: true, smtputf8: true))
        var transcript = SMTPTranscript()
        var ascii = SMTPTransaction(from: "a@acme.test", to: ["b@example.com"], message: Array("x\r\n".utf8), capabilities: capabilities)
        #expect(text(ascii.begin(&transcript)) == "MAIL FROM:<a@acme.test> SIZE=3\r\n")
        var utf8 = SMTPTransaction(from: "a@acme.test", to: ["zoë@example.com"], message: Array("x\r\n".utf8), capabilities: capabilities)
        #expect(text(utf8.begin(&transcript)) == "MAIL FROM:<a@acme.test> SIZE=3 SMTPUTF8\r\n")
        #expect(SMTPTransaction.Capabilities(SMTPTranscript()) == .init())
    }

    @Test func someRecipientsRefusedTheRestSent() {
        var transcript = SMTPTranscript()
        var t = SMTPTransaction(from: "a@acme.test", to: ["gone@example.com", "b@example.com"], message: Array("x\r\n".utf8), capabilities: .init())
        _ = t.begin(&transcript)
        _ = feed(&t, "250 Ok\r\n", &transcript)
        #expect(feed(&t, "550 5.1.1 <gone@example.com>: User unknown\r\n", &transcript) == .send(Array("RCPT TO:<b@example.com>\r\n".utf8)))
        _ = feed(&t, "250 Ok\r\n", &transcript)
        _ = feed(&t, "354 go\r\n", &transcript)
        #expect(feed(&t, "250 queued\r\n", &transcript) == .finished(.accepted))
        let report = SendReport(transcript, newConnection: true)
        #expect(report.refused == [RefusedRecipient(address: "gone@example.com", reply: "550 5.1.1 <gone@example.com>: User unknown", temporary: false)])
    }

    @Test func everyRecipientRefused() throws {
        var transcript = SMTPTranscript()
        var t = SMTPTransaction(from: "a@acme.test", to: ["x@example.com", "y@example.com"], message: [], capabilities: .init())
        _ = t.begin(&transcript)
        _ = feed(&t, "250 Ok\r\n", &transcript)
        _ = feed(&t, "450 4.2.0 try later\r\n", &transcript)
        let event = feed(&t, "550 5.1.1 unknown\r\n", &transcript)
        #expect(event == .finished(.failed(curlCode: 55, message: "RCPT failed: 550 (last error)", responseCode: 550)))
        // The 450 recipient may yet be accepted: the message waits for it rather than failing
        // on the last reply (SPEC §4 fails only on 5xx for every recipient; the chaos soak lost
        // such recipients before).
        let error = try classify(event, transcript)
        #expect(error.kind == .temporaryFailure)
        #expect(error.isTemporary)
        #expect(error.smtpCode == 450)

        transcript = SMTPTranscript()
        var refused = SMTPTransaction(from: "a@acme.test", to: ["x@example.com", "y@example.com"], message: [], capabilities: .init())
        _ = refused.begin(&transcript)
        _ = feed(&refused, "250 Ok\r\n", &transcript)
        _ = feed(&refused, "553 5.1.3 bad address\r\n", &transcript)
        let permanent = try classify(feed(&refused, "550 5.1.1 unknown\r\n", &transcript), transcript)
        #expect(permanent.kind == .recipientRejected)
        #expect(!permanent.isTemporary)
        #expect(permanent.smtpCode == 550)
    }

    @Test func aRefusedSenderIsTheConfigurations() throws {
        var transcript = SMTPTranscript()
        var t = SMTPTransaction(from: "a@acme.test", to: ["b@example.com"], message: [], capabilities: .init())
        _ = t.begin(&transcript)
        let error = try classify(feed(&t, "550 5.7.1 Sender address rejected: not owned by user\r\n", &transcript), transcript)
        #expect(error.kind == .fromRejected)
        #expect(error.isConfigurationLevel)
        #expect(error.enhancedCode == "5.7.1")
    }

    @Test func repliesAfterData() throws {
        for (reply, kind, temporary) in [
            ("451 4.3.0 Error: queue file write error", DeliveryError.Kind.temporaryFailure, true),
            ("554 5.7.1 Message rejected: looks like spam", .messageRejected, false),
        ] {
            var transcript = SMTPTranscript()
            var t = SMTPTransaction(from: "a@acme.test", to: ["b@example.com"], message: Array("x\r\n".utf8), capabilities: .init())
            _ = t.begin(&transcript)
            _ = feed(&t, "250 Ok\r\n", &transcript)
            _ = feed(&t, "250 Ok\r\n", &transcript)
            _ = feed(&t, "354 go\r\n", &transcript)
            let event = feed(&t, reply + "\r\n", &transcript)
            #expect(event == .finished(.failed(curlCode: 8, message: "", responseCode: Int(reply.prefix(3))!)))
            let error = try classify(event, transcript)
            #expect(error.kind == kind, "\(reply)")
            #expect(error.isTemporary == temporary)
            #expect(error.text == reply)
        }
    }

    @Test func repliesInPiecesAndOnManyLines() {
        var transcript = SMTPTranscript()
        var t = SMTPTransaction(from: "a@acme.test", to: ["b@example.com"], message: [], capabilities: .init())
        _ = t.begin(&transcript)
        #expect(feed(&t, "250-first line\r\n25", &transcript) == .wait)
        #expect(feed(&t, "0 last", &transcript) == .wait)
        #expect(feed(&t, "\r\n", &transcript) == .send(Array("RCPT TO:<b@example.com>\r\n".utf8)))
        #expect(transcript.serverLines == ["250-first line", "250 last"])
        #expect(SMTPTransaction.finalCode(Array("250".utf8)) == 250)
        #expect(SMTPTransaction.finalCode(Array("250-x".utf8)) == nil)
        #expect(SMTPTransaction.finalCode(Array("25".utf8)) == nil)
        #expect(SMTPTransaction.finalCode(Array("ok 250".utf8)) == nil)
    }

    /// RFC 2920: MAIL, the RCPTs and DATA in one write, the body after DATA's 354; the
    /// transcript still reads in lock step, so refused recipients pair with their replies.
    @Test func pipelinedWhenTheServerOffersIt() {
        var ehlo = SMTPTranscript()
        ehlo.append(.client, chunk: "EHLO mailroute.test")
        ehlo.append(.server, chunk: "250-mx\r\n250-PIPELINING\r\n250 8BITMIME")
        let capabilities = SMTPTransaction.Capabilities(ehlo)
        #expect(capabilities == .init(pipelining: true))
        var transcript = SMTPTranscript()
        var t = SMTPTransaction(from: "a@acme.test", to: ["gone@example.com", "b@example.com"], message: Array("x\r\n".utf8), capabilities: capabilities)
        #expect(text(t.begin(&transcript)) == "MAIL FROM:<a@acme.test>\r\nRCPT TO:<gone@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        #expect(transcript.lines.isEmpty, "a command enters the transcript with its reply")
        // The replies may come in one read or several.
        #expect(feed(&t, "250 2.1.0 Ok\r\n550 5.1.1 <gone@example.com>: User unknown\r\n", &transcript) == .wait)
        #expect(t.owesReplies)
        #expect(feed(&t, "250 2.1.5 Ok\r\n354 go\r\n", &transcript) == .send(Array("x\r\n.\r\n".utf8)))
        #expect(!t.owesReplies)
        #expect(feed(&t, "250 2.0.0 Ok: queued as P1\r\n", &transcript) == .finished(.accepted))
        #expect(transcript.lines.map(\.text) == [
            "MAIL FROM:<a@acme.test>", "250 2.1.0 Ok", "RCPT TO:<gone@example.com>", "550 5.1.1 <gone@example.com>: User unknown",
            "RCPT TO:<b@example.com>", "250 2.1.5 Ok", "DATA", "354 go", "250 2.0.0 Ok: queued as P1",
        ])
        let report = SendReport(transcript, newConnection: false)
        #expect(report.refused.map(\.address) == ["gone@example.com"])
        #expect(report.reply?.line == "250 2.0.0 Ok: queued as P1")
    }

    /// A refusal in a pipeline ends the send at once, named as in lock step (the sender's, or
    /// every recipient's), with replies still owed: the engine closes that connection.
    @Test func aRefusalInAPipeline() throws {
        let pipelining = SMTPTransaction.Capabilities(pipelining: true)
        var transcript = SMTPTranscript()
        var sender = SMTPTransaction(from: "a@acme.test", to: ["b@example.com"], message: Array("x\r\n".utf8), capabilities: pipelining)
        _ = sender.begin(&transcript)
        let refusedSender = feed(&sender, "553 5.7.1 Sender address rejected\r\n503 5.5.1 need MAIL\r\n", &transcript)
        #expect(refusedSender == .finished(.failed(curlCode: 55, message: "MAIL failed: 553", responseCode: 553)))
        #expect(sender.owesReplies)
        let error = try classify(refusedSender, transcript)
        #expect(error.kind == .fromRejected)
        #expect(error.text == "553 5.7.1 Sender address rejected", "the sender's refusal, not what followed it")

        transcript = SMTPTranscript()
        var nobody = SMTPTransaction(from: "a@acme.test", to: ["x@example.com", "y@example.com"], message: Array("x\r\n".utf8), capabilities: pipelining)
        _ = nobody.begin(&transcript)
        let refusedAll = feed(&nobody, "250 Ok\r\n450 4.2.0 later\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n", &transcript)
        #expect(refusedAll == .finished(.failed(curlCode: 55, message: "RCPT failed: 550 (last error)", responseCode: 550)))
        // A 450 among the refusals: the message waits for that recipient (everyRecipientRefused).
        #expect(try classify(refusedAll, transcript).kind == .temporaryFailure)
        #expect(nobody.owesReplies, "DATA's reply was not read as part of the send")
    }

    @Test func dotStuffingAndTheEndOfData() {
        #expect(text(SMTPTransaction.stuffed(Array(".first\r\nmid\r\n.\r\nlast".utf8))) == "..first\r\nmid\r\n..\r\nlast\r\n.\r\n")
        #expect(text(SMTPTransaction.stuffed(Array("a\r\n".utf8))) == "a\r\n.\r\n")
        #expect(text(SMTPTransaction.stuffed(Array("a\n.b\r\n".utf8))) == "a\n.b\r\n.\r\n", "only a dot after CRLF starts a line")
        #expect(text(SMTPTransaction.stuffed([])) == ".\r\n")
        #expect(text(SMTPTransaction.stuffed(Array("\r\n.\r\n..\r\n.".utf8))) == "\r\n..\r\n...\r\n..\r\n.\r\n")
    }

    /// The run-copying stuffer against the rule read byte by byte, on every short message of
    /// dots, CRs, LFs and letters (and random longer ones).
    @Test func dotStuffingMatchesTheByteByByteRule() {
        func reference(_ message: [UInt8]) -> [UInt8] {
            var out: [UInt8] = []
            var atLineStart = true
            for byte in message {
                if atLineStart && byte == 46 { out.append(46) }
                out.append(byte)
                atLineStart = byte == 10 && out.count >= 2 && out[out.count - 2] == 13
            }
            return out + (message.isEmpty || message.suffix(2).elementsEqual([13, 10]) ? [46, 13, 10] : [13, 10, 46, 13, 10])
        }
        let alphabet: [UInt8] = [46, 13, 10, 97]
        var messages: [[UInt8]] = [[]]
        for length in 1...6 {
            for code in 0..<Int(pow(4.0, Double(length))) {
                var c = code
                messages.append((0..<length).map { _ in defer { c /= 4 }; return alphabet[c % 4] })
            }
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 { messages.append((0..<Int.random(in: 7...300, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }) }
        for message in messages where SMTPTransaction.stuffed(message) != reference(message) {
            Issue.record("differs for \(message)")
            return
        }
    }
}

enum TransactionTestError: Error {
    case notAFailure(String)
}
