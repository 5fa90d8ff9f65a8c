import Testing

@testable import MailrouteCore

/// NOTES.md's table of what libcurl 7.88 reports for each SMTP failure, classified.
@Suite struct FailureClassifierTests {
    func transcript(_ lines: [(SMTPTranscript.Direction, String)]) -> SMTPTranscript {
        var t = SMTPTranscript()
        for (d, l) in lines { t.append(d, chunk: l) }
        return t
    }

    let greeted: [(SMTPTranscript.Direction, String)] = [
        (.server, "220 mx ESMTP"), (.client, "EHLO me"), (.server, "250-mx\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 1000"),
    ]

    func classify(_ code: Int, _ message: String = "", response: Int = 0, _ lines: [(SMTPTranscript.Direction, String)] = [])
        -> DeliveryError
    {
        FailureClassifier.classify(curlCode: code, errorMessage: message, responseCode: response, transcript: transcript(lines))
    }

    @Test func connectionFailures() {
        #expect(classify(7, "Failed to connect to 127.0.0.1 port 1: Couldn't connect to server").kind == .connectionFailed)
        #expect(classify(6, "Could not resolve host: nowhere.invalid").kind == .connectionFailed)
        let silent = classify(28, "Operation timed out after 5000 milliseconds with 0 bytes received")
        // Ambiguous: the breaker counts it instead of tripping at once (SPEC §4).
        #expect(silent.kind == .connectTimeout)
        #expect(silent.isTemporary)
        #expect(!silent.isConfigurationLevel)
        #expect(silent.configErrorKind == .connectionFailed)
        let greeting554 = classify(8, "Got unexpected smtp-server response: 554", response: 554, [(.server, "554 5.3.2 go away")])
        #expect(greeting554.kind == .connectionFailed)
        #expect(greeting554.smtpCode == 554)
        #expect(greeting554.enhancedCode == "5.3.2")
        #expect(greeting554.text == "554 5.3.2 go away")
    }

    @Test func authFailure() {
        let e = classify(67, "", response: 535, greeted + [(.client, "AUTH PLAIN AGFsaWNlAHdyb25n"), (.server, "535 5.7.8 Authentication credentials invalid")])
        #expect(e.kind == .authFailed)
        #expect(e.smtpCode == 535)
        #expect(e.enhancedCode == "5.7.8")
        #expect(!e.isTemporary)
        #expect(e.isConfigurationLevel)
    }

    @Test func temporaryAuthFailureIsNotAConfigurationFailure() {
        let e = classify(67, "", response: 454, greeted + [(.client, "AUTH PLAIN x"), (.server, "454 4.7.0 Temporary authentication failure")])
        #expect(e.isTemporary)
        #expect(!e.isConfigurationLevel)
    }

    @Test(arguments: [
        (64, "STARTTLS not supported."),
        (60, "SSL certificate problem: self-signed certificate"),
        (60, "SSL: no alternative certificate subject name matches target host name '127.0.0.1'"),
        (35, "error:0A00010B:SSL routines::wrong version number"),
    ])
    func tlsFailures(code: Int, message: String) {
        let e = classify(code, message)
        #expect(e.kind == .tlsFailed)
        #expect(e.text == message)
        #expect(e.isConfigurationLevel)
    }

    @Test func mailAndRcptRefusalsAreToldApartByText() {
        let from = classify(55, "MAIL failed: 550", response: 550, greeted + [(.client, "MAIL FROM:<a@b.c>"), (.server, "550 5.7.1 Sender rejected")])
        #expect(from.kind == .fromRejected)
        #expect(from.text == "550 5.7.1 Sender rejected")
        #expect(from.isConfigurationLevel)
        let rcpt = classify(55, "RCPT failed: 550", response: 550, greeted + [(.client, "RCPT TO:<x@y.z>"), (.server, "550 5.1.1 User unknown")])
        #expect(rcpt.kind == .recipientRejected)
        #expect(!rcpt.isConfigurationLevel)
        let tempRcpt = classify(55, "RCPT failed: 451", response: 451, greeted + [(.client, "RCPT TO:<x@y.z>"), (.server, "451 4.3.0 Try later")])
        #expect(tempRcpt.kind == .temporaryFailure)
        #expect(tempRcpt.isTemporary)
    }

    /// The chaos soak's finding: [452, 550] failed the message for good, dropping the recipient
    /// that had only been asked to come back; [550, 452] deferred it.
    @Test func everyRecipientRefusedIsTemporaryWhenOneRefusalIs() {
        let refusals = [("good@y.z", "452 4.3.1 Insufficient system storage"), ("gone@y.z", "550 5.1.1 User unknown")]
        for order in [refusals, refusals.reversed()] {
            var lines = greeted + [(.client, "MAIL FROM:<a@b.c>"), (.server, "250 ok")]
            for (address, reply) in order { lines += [(.client, "RCPT TO:<\(address)>"), (.server, reply)] }
            let last = Int(order.last!.1.prefix(3))!
            let error = classify(55, "RCPT failed: \(last) (last error)", response: last, lines)
            #expect(error.kind == .temporaryFailure)
            #expect(error.isTemporary)
            #expect(error.smtpCode == 452)
            #expect(error.text == "452 4.3.1 Insufficient system storage")
        }
        let allPermanent = classify(55, "RCPT failed: 550 (last error)", response: 550, greeted + [
            (.client, "RCPT TO:<a@y.z>"), (.server, "550 5.1.1 User unknown"), (.client, "RCPT TO:<b@y.z>"), (.server, "553 5.1.3 Bad address"),
        ])
        #expect(allPermanent.kind == .recipientRejected)
        #expect(!allPermanent.isTemporary)
    }

    @Test func rejectionAfterDataIsAMessageRejection() {
        let lines = greeted + [
            (.client, "MAIL FROM:<a@b.c>"), (.server, "250 ok"), (.client, "RCPT TO:<x@y.z>"), (.server, "250 ok"),
            (.client, "DATA"), (.server, "354 go ahead"), (.server, "554 5.7.0 Message refused: spam"),
        ]
        let e = classify(8, "", response: 554, lines)
        #expect(e.kind == .messageRejected)
        #expect(!e.isTemporary)
        #expect(!e.isConfigurationLevel)
        var temp = lines
        temp[temp.count - 1] = (.server, "451 4.3.0 Local error in processing")
        #expect(classify(8, "", response: 451, temp).kind == .temporaryFailure)
    }

    @Test func lostAndSlowConnectionsAreTemporary() {
        let lost = classify(56, "response reading failed", greeted)
        #expect(lost.kind == .connectionLost)
        #expect(lost.isTemporary)
        let slow = classify(28, "Operation timed out after 5000 milliseconds with 120 bytes received", greeted)
        #expect(slow.kind == .timeout)
        #expect(slow.isTemporary)
    }

    @Test func aReusedConnectionBreakingIsLostNotUnreachable() {
        // The transcript of a send on a reused connection starts at MAIL: the greeting was an
        // earlier send's. Without knowing that, a drop reads like a server that never answered.
        let mail: [(SMTPTranscript.Direction, String)] = [(.client, "MAIL FROM:<a@b.c>")]
        #expect(classify(56, "response reading failed", mail).kind == .connectionFailed)
        let lost = FailureClassifier.classify(
            curlCode: 56, errorMessage: "response reading failed", responseCode: 0, transcript: transcript(mail), reusedConnection: true)
        #expect(lost.kind == .connectionLost)
        #expect(lost.isTemporary && !lost.isConfigurationLevel)
        let slow = FailureClassifier.classify(
            curlCode: 28, errorMessage: "server response timeout", responseCode: 0, transcript: transcript(mail), reusedConnection: true)
        #expect(slow.kind == .timeout)
    }

    @Test func transcriptRedactsCredentials() {
        let t = transcript(greeted + [
            (.client, "AUTH PLAIN AGFsaWNlAHMzY3JldA=="), (.server, "235 ok"),
            (.client, "AUTH LOGIN"), (.server, "334 VXNlcm5hbWU6"), (.client, "YWxpY2U="), (.server, "334 UGFzc3dvcmQ6"),
            (.client, "czNjcmV0"), (.server, "235 2.7.0 Authentication successful"),
        ])
        let all = t.lines.map(\.text).joined(separator: "\n")
        #expect(!all.contains("AGFsaWNlAHMzY3JldA=="))
        #expect(!all.contains("YWxpY2U="))
        #expect(!all.contains("czNjcmV0"))
        #expect(t.sawAuthSuccess)
    }

    @Test func replyParsing() {
        #expect(SMTPReply("250 2.0.0 Ok: queued as 4XYZ")?.enhancedCode == "2.0.0")
        #expect(SMTPReply("250-PIPELINING")?.isContinuation == true)
        #expect(SMTPReply("550 User unknown")?.enhancedCode == nil)
        #expect(SMTPReply("hello") == nil)
    }
}
