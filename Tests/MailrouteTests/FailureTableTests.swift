import Foundation
import Testing

@testable import MailrouteCore

/// SPEC §4's failure table, row by row, through a running `mailrouted` and real servers.
@Suite struct FailureTableTests {
    let relay: SMTPTestServer
    let env: CtlEnvironment
    let daemon: DaemonProcess

    init() throws {
        relay = try SMTPTestServer()
        env = try CtlEnvironment(platformPort: relay.port, delivery: ["retry_initial_s = 60", "cooldown_s = 600", "connect_timeout_s = 2"])
        daemon = DaemonProcess(env: env)
    }

    func add(_ name: String, port: Int, _ extra: String...) throws {
        let result = try env.addConfig(name: name, port: port, extra: ["--from-name", "Brand \(name)"] + extra)
        #expect(result.status == 0, "\(result.output)")
    }

    @Test func connectionFailureFallsBackToThePlatformRelayAtOnce() throws {
        try add("main", port: closedPort())
        try daemon.start()
        let id = try daemon.enqueue(subject: "Fallback me")
        let row = try daemon.waitFor(id, .sent)
        #expect(row.status == .sent)
        #expect(row.route == .fallback)
        #expect(row.smtpResponse?.hasPrefix("250 2.0.0 Ok: queued as TEST") == true)

        let attempts = try daemon.attempts(id)
        #expect(attempts.map(\.outcome) == [.fallback, .sent])
        #expect(attempts.first?.errorKind == "connection_failed")
        #expect(attempts.first?.configLabel == "acme/main")
        #expect(attempts.last?.configLabel == "platform")

        let config = try daemon.config("acme", "main")
        #expect(config.status == .error)
        #expect(config.errorKind == .connectionFailed)

        // Brand name kept, platform address used, replies to the brand.
        let mail = try #require(relay.messages().first)
        #expect(mail.envelope.mail_from == "platform@mailroute.test")
        #expect(mail.header("From") == "Brand main <platform@mailroute.test>")
        #expect(mail.header("Reply-To") == "main@acme.test")
    }

    /// SPEC §4: silence up to the greeting defers like a 4xx; only `breaker_timeouts` in a
    /// row trip the configuration, and then its mail falls back.
    @Test func connectTimeoutsTripOnlyAfterTheBreakerCount() throws {
        let silent = try SMTPTestServer.fault("--silent")
        let env = try CtlEnvironment(
            platformPort: relay.port,
            delivery: ["retry_initial_s = 1", "retry_max_s = 1", "cooldown_s = 600", "connect_timeout_s = 1", "breaker_timeouts = 2"])
        #expect(try env.addConfig(name: "main", port: silent.port).status == 0)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let id = try daemon.enqueue(subject: "patience")
        let row = try daemon.waitFor(id, .sent, timeout: 20)
        #expect(row.route == .fallback)
        let attempts = try daemon.attempts(id)
        #expect(attempts.map(\.outcome) == [.deferred, .fallback, .sent], "one timeout is not enough to trip; the second is")
        #expect(attempts.prefix(2).allSatisfy { $0.errorKind == "connect_timeout" })
        let config = try daemon.config("acme", "main")
        #expect(config.status == .error)
        #expect(config.errorKind == .connectionFailed)
    }

    @Test func aDownConfigurationSendsStraightToFallback() throws {
        try add("main", port: closedPort())
        try daemon.start()
        let first = try daemon.enqueue(subject: "first")
        try daemon.waitFor(first, .sent)
        let second = try daemon.enqueue(subject: "second")
        #expect(try daemon.waitFor(second, .sent).route == .fallback)
        // No second try against the broken server: it is down until a probe succeeds.
        #expect(try daemon.attempts(second).map(\.outcome) == [.sent])
    }

    @Test func authFailureWithFallbackNoneDefers() throws {
        let server = try SMTPTestServer(.init(starttls: true, auth: ("alice", "right")))
        let result = try env.addConfig(
            name: "main", port: server.port, security: "starttls",
            extra: ["--username", "alice", "--ca-file", TestCA.shared.caFile, "--fallback", "none"], password: "Wr0ng-Pa55word")
        #expect(result.status == 0)
        try daemon.start()
        let id = try daemon.enqueue()
        let row = try daemon.waitFor(id, .deferred)
        #expect(row.status == .deferred)
        #expect(row.lastErrorKind == "auth_failed")
        #expect((row.nextAttemptAt ?? 0) > Date().timeIntervalSince1970 + 500, "waits for the cool-down")
        #expect(try daemon.config("acme", "main").errorKind == .authFailed)
        #expect(relay.messages().isEmpty)
        #expect(daemon.log().contains("auth_failed"))
        #expect(!daemon.log().contains("Wr0ng-Pa55word"), "no password in the log")
        #expect(!daemon.log().contains("AHdyb25n"), "nor an AUTH line")
    }

    @Test func tlsFailureFallsBack() throws {
        let plain = try SMTPTestServer()
        try env.addConfig(name: "main", port: plain.port, security: "starttls")
        try daemon.start()
        let id = try daemon.enqueue()
        #expect(try daemon.waitFor(id, .sent).route == .fallback)
        #expect(try daemon.config("acme", "main").errorKind == .tlsFailed)
        #expect(plain.messages().isEmpty)
    }

    @Test func refusedSenderMarksTheConfigurationAndFallsBack() throws {
        let server = try SMTPTestServer(.init(rejectFrom: ["main@acme.test"]))
        try add("main", port: server.port)
        try daemon.start()
        let id = try daemon.enqueue()
        #expect(try daemon.waitFor(id, .sent).route == .fallback)
        #expect(try daemon.config("acme", "main").errorKind == .fromRejected)
    }

    @Test func a4xxAfterDataDefersAndLeavesTheConfigurationAlone() throws {
        let server = try SMTPTestServer.fault("--tempfail-data", "2")
        try add("main", port: server.port)
        try daemon.start()
        let first = try daemon.enqueue(subject: "one")
        #expect(try daemon.waitFor(first, .sent).route == .default)
        let second = try daemon.enqueue(subject: "two")
        let row = try daemon.waitFor(second, .deferred)
        #expect(row.status == .deferred)
        #expect(row.lastErrorKind == "temporary_failure")
        let attempt = try #require(try daemon.attempts(second).first)
        #expect(attempt.outcome == .deferred)
        #expect(attempt.smtpCode == 451)
        #expect(attempt.enhancedCode == "4.3.0")
        // Backoff from retry_initial_s = 60 with equal jitter: 30-60 s.
        let wait = (row.nextAttemptAt ?? 0) - attempt.at
        #expect(wait >= 29 && wait <= 61, "\(wait)")
        #expect(try daemon.config("acme", "main").status != .error)
        #expect(relay.messages().isEmpty, "no fallback for a temporary failure")
    }

    @Test func aConnectionCutMidMessageDefers() throws {
        let server = try SMTPTestServer.fault("--cut-data", "1")
        try add("main", port: server.port)
        try daemon.start()
        let id = try daemon.enqueue()
        let row = try daemon.waitFor(id, .deferred)
        #expect(row.status == .deferred)
        #expect(["connection_lost", "timeout"].contains(row.lastErrorKind ?? ""))
        #expect(try daemon.config("acme", "main").status != .error)
        #expect(relay.messages().isEmpty)
    }

    /// Each of these runs in lock step and pipelined (RFC 2920), where the refusals come in
    /// one batch of replies and the connection is out of step after them.
    static let pipelining: [[String]] = [[], ["--pipelining"]]

    @Test(arguments: pipelining) func everyRecipientRefusedFailsWithoutFallback(_ mode: [String]) throws {
        let server = try SMTPTestServer(script: "fault_server.py", arguments: mode + ["--reject-rcpt", "a@example.com", "--reject-rcpt", "b@example.com"])
        try add("main", port: server.port)
        try daemon.start()
        let id = try daemon.enqueue(to: ["a@example.com", "b@example.com"])
        let row = try daemon.waitFor(id, .failed)
        #expect(row.status == .failed)
        #expect(row.lastErrorKind == "recipient_rejected")
        #expect(try daemon.attempts(id).last?.smtpCode == 550)
        #expect(relay.messages().isEmpty)
        #expect(try daemon.config("acme", "main").status != .error)
        // The next message still leaves through that server (pipelined, on a new connection).
        let next = try daemon.enqueue(to: ["c@example.com"])
        #expect(try daemon.waitFor(next, .sent).status == .sent)
        #expect(server.events().contains("pipelined") == !mode.isEmpty)
    }

    /// Pipelined, the 503s that follow a refused MAIL are not what the configuration is marked with.
    @Test func aPipelinedRefusedSenderMarksTheConfigurationWithItsOwnReply() throws {
        let server = try SMTPTestServer.fault("--pipelining", "--reject-from", "main@acme.test")
        try add("main", port: server.port)
        try daemon.start()
        let id = try daemon.enqueue()
        #expect(try daemon.waitFor(id, .sent).route == .fallback)
        let config = try daemon.config("acme", "main")
        #expect(config.errorKind == .fromRejected)
        #expect(config.errorText?.hasPrefix("553 5.7.1 <main@acme.test>") == true, "\(config.errorText ?? "")")
        #expect(server.events().contains("pipelined"))
    }

    @Test(arguments: pipelining) func rejectionAfterDataFails(_ mode: [String]) throws {
        let server = try SMTPTestServer(script: "fault_server.py", arguments: mode + ["--reject-data"])
        try add("main", port: server.port)
        try daemon.start()
        let id = try daemon.enqueue()
        let row = try daemon.waitFor(id, .failed)
        #expect(row.status == .failed)
        #expect(row.lastErrorKind == "message_rejected")
        #expect(row.lastError?.hasPrefix("554 5.7.1") == true)
        #expect(relay.messages().isEmpty)
    }

    @Test(arguments: pipelining) func someRecipientsRefusedSendsToTheRestAndRecordsThem(_ mode: [String]) throws {
        let server = try SMTPTestServer(script: "fault_server.py", arguments: mode + ["--reject-rcpt", "gone@example.com"])
        try add("main", port: server.port)
        try daemon.start()
        let id = try daemon.enqueue(to: ["ok@example.com", "gone@example.com"])
        let row = try daemon.waitFor(id, .sent)
        #expect(row.status == .sent)
        #expect(row.lastError?.contains("gone@example.com") == true)
        let refused = try #require(try daemon.attempts(id).last?.refusedRecipients)
        #expect(refused.contains("gone@example.com"))
        #expect(refused.contains("550"))
        #expect(try #require(server.messages().first).envelope.rcpt_tos == ["ok@example.com"])
    }

    @Test func unauthorizedSenderIsRefusedWhenBlocking() throws {
        let server = try SMTPTestServer()
        try add("main", port: server.port, "--authorized-domains", "acme.test", "--block-unauthorized")
        try daemon.start()
        let blocked = try daemon.enqueue(mailFrom: "ceo@evil.test")
        let row = try daemon.waitFor(blocked, .failed)
        #expect(row.lastErrorKind == "sender_unauthorized")
        let allowed = try daemon.enqueue(mailFrom: "sales@acme.test")
        try daemon.waitFor(allowed, .sent)
        #expect(server.messages().map(\.envelope.mail_from) == ["sales@acme.test"])
        #expect(daemon.log().contains("sender not authorized"))
    }

    @Test func unauthorizedSenderIsSentWithAWarningWhenNotBlocking() throws {
        let server = try SMTPTestServer()
        try add("main", port: server.port, "--authorized-senders", "news@acme.test")
        try daemon.start()
        let id = try daemon.enqueue(mailFrom: "other@elsewhere.test")
        try daemon.waitFor(id, .sent)
        #expect(daemon.log().contains("sender not authorized; sent anyway"))
    }

    @Test func aFailingPlatformRelayDefers() throws {
        let relayEnv = try CtlEnvironment(platformPort: closedPort(), delivery: ["retry_initial_s = 60"])
        let daemon = DaemonProcess(env: relayEnv)
        try daemon.start()
        let id = try daemon.enqueue(tenant: nil)
        let row = try daemon.waitFor(id, .deferred)
        #expect(row.status == .deferred)
        #expect(row.route == .platform)
        #expect(row.lastErrorKind == "connection_failed")
    }

    @Test func anUnsendableRowFailsAndDoesNotStopTheQueue() throws {
        let server = try SMTPTestServer()
        try add("main", port: server.port)
        try daemon.start()
        // The schema refuses what SQL can see; the parser catches the rest at delivery.
        #expect(throws: (any Error).self) { try daemon.enqueue(to: ["not an address"]) }
        let bad = try daemon.enqueue(to: ["a..b@example.com"])
        let good = try daemon.enqueue(to: ["fine@example.com"])
        let badRow = try daemon.waitFor(bad, .failed)
        #expect(badRow.lastErrorKind == "invalid_message")
        #expect(badRow.lastError?.contains("a..b@example.com") == true)
        #expect(try daemon.waitFor(good, .sent).status == .sent)
    }
}
