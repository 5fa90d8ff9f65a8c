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

    func decide(
        _ error: DeliveryError?, attempts: Int = 1, expires: Double? = nil, fallback: FallbackPolicy = .platform,
        viaPlatform: Bool = false, timeoutsBefore: Int = 0
    ) -> Decision {
        let completion: PoolCompletion = error.map { .failed($0) } ?? .sent(SendReport(reply: nil, refused: [], newConnection: true))
        let tenant = TryContext.Tenant(fallback: fallback, consecutiveTimeouts: timeoutsBefore, breakerTimeouts: 3, firstProbeAt: 1300)
        return DeliveryPolicy.decide(
            completion, TryContext(attemptsAfter: attempts, expiresAt: expires, now: 1000, retry: retry, random: 0, tenant: viaPlatform ? nil : tenant))
    }

    let refused = DeliveryError(kind: .connectionFailed, text: "refused", isTemporary: false)
    let tempfail = DeliveryError(kind: .temporaryFailure, smtpCode: 451, text: "451 later", isTemporary: true)
    let rejected = DeliveryError(kind: .messageRejected, smtpCode: 554, text: "554 spam", isTemporary: false)
    let silence = DeliveryError(kind: .connectTimeout, text: "Operation timed out after 5000 milliseconds with 0 bytes received", isTemporary: true)

    @Test func theFailureTable() {
        #expect(decide(nil) == .sent)
        #expect(decide(refused) == .tripAndFallBack)
        #expect(decide(refused, fallback: .none) == .tripAndWait(until: 1300), "waits for the first probe")
        #expect(decide(DeliveryError(kind: .authFailed, smtpCode: 535, text: "535", isTemporary: false)) == .tripAndFallBack)
        #expect(decide(tempfail) == .deferred(until: 1015))
        #expect(decide(rejected) == .failed)
        #expect(decide(DeliveryError(kind: .recipientRejected, smtpCode: 550, text: "550", isTemporary: false)) == .failed)
        #expect(DeliveryPolicy.decide(.notStarted, TryContext(attemptsAfter: 1, expiresAt: nil, now: 0, retry: retry, random: 0, tenant: nil)) == .notStarted)
    }

    @Test func attemptsCarryTheirFinalOutcome() {
        #expect(Decision.tripAndFallBack.attemptOutcome == .fallback)
        #expect(Decision.tripAndWait(until: 1).attemptOutcome == .deferred)
        #expect(Decision.failed.attemptOutcome == .failed)
        #expect(Decision.sent.attemptOutcome == .sent)
    }

    /// SPEC §4: silence is ambiguous; only breaker_timeouts of it in a row trips.
    @Test func connectTimeoutsTripOnlyInARow() {
        #expect(decide(silence, timeoutsBefore: 0) == .deferred(until: 1015))
        #expect(decide(silence, timeoutsBefore: 1) == .deferred(until: 1015))
        #expect(decide(silence, timeoutsBefore: 2) == .tripAndFallBack, "the third in a row")
        #expect(decide(silence, fallback: .none, timeoutsBefore: 2) == .tripAndWait(until: 1300))
        #expect(decide(silence, viaPlatform: true, timeoutsBefore: 5) == .deferred(until: 1015), "the relay never trips")
    }

    @Test func theBreakerForgivesAfterASuccessAndForgetsOldSettings() {
        var health = ConfigHealth(breakerTimeouts: 3, cooldownSeconds: 300)
        var config = SMTPConfigRecord(tenant: "t", name: "n", host: "h", fromAddress: "a@h.test")
        config.id = 7
        var trips = [health.timedOut(config), health.timedOut(config)]
        health.reached(config)
        #expect(health.consecutiveTimeouts(config) == 0)
        trips += [health.timedOut(config), health.timedOut(config), health.timedOut(config)]
        #expect(trips == [false, false, false, false, true], "three in a row, the success between forgiving the first two")
        config.settingsVersion += 1
        #expect(health.consecutiveTimeouts(config) == 0, "edited connection settings start afresh")
    }

    /// A trip counts at once, before the routing shows it: claims plan around it and
    /// deliveries holding the older snapshot do not try again (a refused login is not repeated).
    @Test func aTripCountsBeforeTheRoutingShowsIt() {
        var health = ConfigHealth(breakerTimeouts: 3, cooldownSeconds: 300)
        var config = SMTPConfigRecord(tenant: "t", name: "n", host: "h", fromAddress: "a@h.test")
        config.id = 7
        config.maxConnections = 1
        health.trip(config, now: 1000)
        #expect(health.isDown(config))
        #expect(health.trippedVersions == [7: config.settingsVersion])
        let plan = ClaimPlan(now: 1000, leaseSeconds: 300, expire: false, limit: 10, room: [nil: 1], defaultMaxConnections: 4, categories: [:])
        var planned = plan
        planned.down = health.trippedVersions
        let candidate = [(id: Int64(1), resolution: RouteResolution(config: config, step: .default, trail: []))]
        #expect(plan.choose(candidate + candidate) == [0, 1], "as committed it is up: its own room")
        #expect(planned.choose(candidate + candidate) == [0], "tripped: the relay's room of one")

        health.read([7: config], now: 1005)
        #expect(health.isDown(config), "the routing read before the status was written")
        var down = config
        (down.status, down.errorKind) = (.error, .authFailed)
        health.read([7: down], now: 1006)
        #expect(!health.isDown(config) && health.isDown(down), "now the status says it")
        health.trip(config, now: 2000)
        health.read([7: config], now: 2011)
        #expect(!health.isDown(config), "a status write that never landed bars it ten seconds at most")
        health.trip(config, now: 3000)
        var edited = config
        edited.settingsVersion += 1
        health.read([7: edited], now: 3001)
        #expect(!health.isDown(edited), "new settings start afresh")
        health.trip(config, now: 4000)
        health.probeFinished(config, succeeded: true)
        #expect(!health.isDown(config), "a probe that got through")
    }

    @Test func failedProbesDoubleTheWaitUpToAnHour() {
        let health = ConfigHealth(breakerTimeouts: 3, cooldownSeconds: 300)
        #expect(health.firstProbe(now: 1000) == 1300)
        #expect(health.nextProbe(afterFailures: 1, now: 1000) == 1600)
        #expect(health.nextProbe(afterFailures: 2, now: 1000) == 2200)
        #expect(health.nextProbe(afterFailures: 3, now: 1000) == 3400)
        #expect(health.nextProbe(afterFailures: 4, now: 1000) == 4600, "capped at an hour")
        #expect(health.nextProbe(afterFailures: 40, now: 1000) == 4600)
    }

    @Test func oneProbeAtATimeAfterTheScheduledTime() {
        var health = ConfigHealth(breakerTimeouts: 3, cooldownSeconds: 300)
        var config = SMTPConfigRecord(tenant: "t", name: "n", host: "h", fromAddress: "a@h.test")
        config.id = 1
        config.status = .error
        config.errorKind = .authFailed
        config.statusChangedAt = 1000
        config.nextProbeAt = 1300
        #expect(health.probesDue([config], now: 1200).isEmpty)
        #expect(health.probesDue([config], now: 1300).count == 1)
        #expect(health.probesDue([config], now: 1400).isEmpty, "one in flight")
        health.probeFinished(config, succeeded: false)
        config.nextProbeAt = 1900
        #expect(health.probesDue([config], now: 1400).isEmpty, "the doubled wait")
        #expect(health.probesDue([config], now: 1900).count == 1)
    }

    @Test func theRelayFailingDefersRatherThanFallingBackAgain() {
        #expect(decide(refused, viaPlatform: true) == .deferred(until: 1015))
    }

    @Test func triesAndTimeRunOut() {
        #expect(decide(tempfail, attempts: 10) == .failed)
        #expect(decide(tempfail, attempts: 1, expires: 1010) == .expired)
        #expect(decide(tempfail, attempts: 1, expires: 2000) == .deferred(until: 1015))
    }

    /// A configuration that breaks as its message runs out of time still goes to `error`:
    /// otherwise the next message would try the broken server again instead of waiting.
    @Test func aTripIsKeptWhenTheMessageRunsOut() {
        #expect(decide(refused, expires: 1200, fallback: .none) == .tripAndExpire, "the first probe (1300) is past the deadline")
        #expect(decide(refused, attempts: 10, fallback: .none) == .tripAndFail)
        #expect(Decision.tripAndExpire.trips && Decision.tripAndFail.trips)
        #expect(Decision.tripAndFail.attemptOutcome == .failed)
    }

    /// SPEC §4 "Nothing waits forever": one deadline, the earlier of the message's own and
    /// the lifetime after it was due, and a reason that says which ran out.
    @Test func theLifetimeBoundsEveryDeadline() {
        let lifetime = MessageLifetime(seconds: 432_000)
        #expect(lifetime.deadline(ownDeadline: nil, dueAt: 100) == 432_100)
        #expect(lifetime.deadline(ownDeadline: 3700, dueAt: 100) == 3700)
        #expect(lifetime.deadline(ownDeadline: 1e9, dueAt: 100) == 432_100)
        #expect(lifetime.reason(deadline: 432_100, dueAt: 100).contains("max_queue_lifetime_s (432000 s)"))
        #expect(lifetime.reason(deadline: 3700, dueAt: 100) == MessageLifetime.ownReason)
        #expect(lifetime.reason(deadline: 432_100, dueAt: 100, lastError: "451 4.3.0 later").hasSuffix("; last error: 451 4.3.0 later"))
        #expect(MessageLifetime(seconds: 1.5).lifetimeReason.contains("(1.5 s)"))
        #expect(lifetime.retryDeadline(now: 5000) == 437_000)
    }

    @Test func aDownConfigurationIsOneWithAConfigurationLevelError() {
        var config = SMTPConfigRecord(tenant: "t", name: "n", host: "h", fromAddress: "a@h.test")
        #expect(!DeliveryPolicy.isDown(config))
        config.status = .error
        config.errorKind = .recipientRejected
        #expect(!DeliveryPolicy.isDown(config), "a refused test recipient says nothing about the server")
        config.errorKind = .authFailed
        config.statusChangedAt = 1000
        #expect(DeliveryPolicy.isDown(config))
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
        let plan = ClaimPlan(
            now: 0, leaseSeconds: 300, expire: false, limit: 100, room: [:], defaultMaxConnections: 4,
            categories: MailrouteConfiguration().categories)
        func admit(_ category: String, _ priority: Int?, tenant: String? = "acme") -> Admission {
            plan.admit(
                AdmissionRow(id: 1, keys: RoutingKeys(tenant: tenant, category: category), priority: priority, sendAt: nil, expiresAt: nil, createdAt: 100),
                in: table)
        }
        #expect(admit("report", nil).effectivePriority == 2, "report is 4, the configuration 2")
        #expect(admit("report", 5).effectivePriority == 2)
        #expect(admit("password_reset", nil).effectivePriority == 1)
        #expect(admit("password_reset", nil).expiresAt == 3700, "one hour TTL")
        #expect(admit("report", nil).expiresAt == 432_100.0, "no TTL: the queue lifetime from its due time")
        #expect(admit("report", nil, tenant: nil).effectivePriority == 4)
        #expect(admit("report", nil, tenant: nil).route == .platform)
        #expect(admit("newsletter", nil, tenant: nil).effectivePriority == 3)
    }

    /// A pool without room holds back only its own rows; a down configuration's rows go to
    /// the relay's room, or (fallback none) are taken only to be put back.
    @Test func claimingChoosesByRoomPerPool() {
        func config(_ id: Int64, fallback: FallbackPolicy = .platform, down: Bool = false) -> SMTPConfigRecord {
            var c = SMTPConfigRecord(tenant: "t\(id)", name: "n", host: "h", fromAddress: "a@h.test")
            c.id = id
            c.fallback = fallback
            c.maxConnections = 1
            if down { (c.status, c.errorKind) = (.error, .authFailed) }
            return c
        }
        func to(_ c: SMTPConfigRecord?) -> RouteResolution { RouteResolution(config: c, step: c == nil ? .platform : .default, trail: []) }
        let full = config(1), open = config(2), downRelay = config(3, down: true), downWait = config(4, fallback: .none, down: true)
        let plan = ClaimPlan(
            now: 0, leaseSeconds: 300, expire: false, limit: 100, room: [1: 0, nil: 1], defaultMaxConnections: 4, categories: [:])
        let candidates: [(id: Int64, resolution: RouteResolution)] = [
            (10, to(full)), (11, to(open)), (12, to(open)), (13, to(open)), (14, to(downRelay)), (15, to(downRelay)), (16, to(downWait)),
        ]
        // open: 1 connection × 2 per connection; the relay has room for one.
        #expect(plan.choose(candidates).map { candidates[$0].id } == [11, 12, 14, 16])
    }

    /// A fast pool gets 50 ms of its own work in hand (one claim takes many rows); a slow one
    /// one per connection, so nothing waits long behind what it holds.
    @Test func messagesInHandFollowThePoolsPace() {
        let four = PoolLimits(maxConnections: 4, maxMessagesPerConnection: 100, idleTimeout: 60)
        #expect(ClaimPlan.depth(secondsPerMessage: nil, limits: four) == 2, "no measure yet")
        #expect(ClaimPlan.depth(secondsPerMessage: 0.2, limits: four) == 1, "a slow server")
        #expect(ClaimPlan.depth(secondsPerMessage: 0.04, limits: four) == 2, "rounded up: 50 ms of work is more than one")
        #expect(ClaimPlan.depth(secondsPerMessage: 0.005, limits: four) == 10)
        #expect(ClaimPlan.depth(secondsPerMessage: 0.0007, limits: four) == 16, "a loopback sink: capped")
        #expect(ClaimPlan.depth(secondsPerMessage: 0, limits: four) == 2, "a nonsense measure counts as none")
        #expect(ClaimPlan.depth(secondsPerMessage: 1e-300, limits: four) == 16, "no overflow on the way to an Int")
        var limited = four
        limited.ratePerMinute = 600
        #expect(ClaimPlan.depth(secondsPerMessage: 0.0007, limits: limited) == 1, "its rate, not its server, sets the pace")
        limited.ratePerMinute = 600_000
        #expect(ClaimPlan.depth(secondsPerMessage: 0.0007, limits: limited) == 16, "a limit it never reaches")
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
