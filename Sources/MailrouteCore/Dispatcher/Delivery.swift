import Foundation

/// One claimed message's try: compose and sign as its plan says, send through the pool its
/// plan names, let `DeliveryPolicy.decide` say what follows, and write the outcome with
/// attempt rows that carry their final outcome from the start. Runs off the dispatcher's
/// actor, so composition and RSA signatures never hold up the claim loop. A class, so the
/// frames of its steps, alive while the message waits for a connection, hold a reference
/// instead of the plan's copy of the configuration.
final class Delivery: Sendable {
    let claimed: ClaimedMessage
    let plan: DeliveryPlan
    let dispatcher: Dispatcher

    init(claimed: ClaimedMessage, plan: DeliveryPlan, dispatcher: Dispatcher) {
        self.claimed = claimed
        self.plan = plan
        self.dispatcher = dispatcher
    }

    private var message: MessageRecord { claimed.message }
    private var now: Double { dispatcher.now() }

    func run() async {
        if let expires = message.expiresAt, expires <= now {
            await dispatcher.finish(claimed, DeliveryOutcome(status: .expired, attempts: [], errorKind: "expired", error: message.lastError))
            return
        }
        switch plan.target {
        case .platform: await viaPlatform(identity: plan.identity, route: plan.route, earlier: [])
        case .config(let config): await via(config)
        }
    }

    // `via` is split in steps that are not inlined into it: an async function's frame holds
    // every local of every branch, and this one stays allocated while the message waits for
    // a connection (with 1,000 tenants, 2,000 messages in hand: heaptrack counted ~7 KB each).

    private func via(_ config: SMTPConfigRecord) async {
        if plan.unauthorizedSender != nil, await refuseUnauthorizedSender(config) { return }
        // One visit to the dispatcher for all a try needs to know of the configuration.
        var before = await dispatcher.beforeTry(of: config, now: now)
        if before.isDown {
            await notTried(config, before: before)
            return
        }
        guard let assembled = await prepare(identity: plan.identity, dkim: config.dkim, config: config, route: plan.route, earlier: []) else {
            return
        }
        let started = now
        let completion: PoolCompletion
        let server: String?
        if let pool = await dispatcher.pool(for: config) {
            server = pool.endpoint.server
            completion = await pool.perform(.send(from: assembled.envelopeFrom, to: assembled.recipients, data: assembled.composed.bytes))
            // The breaker weighs the timeouts in a row as they stand when this try ends, not as
            // they stood when it began: tries run side by side, and those that ended meanwhile
            // (timeouts, or a success that forgives them) count.
            before.tenant.consecutiveTimeouts = await dispatcher.noteTry(config, completion)
        } else {
            server = nil
            completion = .failed(DeliveryError(
                kind: .authFailed, text: "the stored password cannot be decrypted (is the key missing or replaced?)", isTemporary: false))
        }
        await settle(completion, config: config, before: before, assembled: assembled, server: server, started: started)
    }

    /// Logs a sender the configuration does not authorize; true when the policy refuses it
    /// (the message has failed then).
    @inline(never) private func refuseUnauthorizedSender(_ config: SMTPConfigRecord) async -> Bool {
        guard let sender = plan.unauthorizedSender else { return false }
        await dispatcher.logSenderNotAuthorized(message, config: config, sender: sender, refused: plan.refused)
        guard plan.refused else { return false }
        let error = DeliveryError(kind: .senderUnauthorized, text: "\(sender) is not an authorized sender of \(config.label)", isTemporary: false)
        let attempt = attemptRecord(number: message.attempts + 1, config: config, route: plan.route, server: nil, outcome: .failed,
            completion: .failed(error), started: now)
        await dispatcher.finish(claimed, outcome(.failed, attempts: [attempt], config: config, route: plan.route, error: error))
        return true
    }

    /// Not tried: its mail goes to the relay, or waits for the probe that brings it back.
    @inline(never) private func notTried(_ config: SMTPConfigRecord, before: Dispatcher.BeforeTry) async {
        if let fallback = plan.fallbackIdentity {
            await viaPlatform(identity: fallback, route: .fallback, earlier: [])
            return
        }
        let reason = "\(config.label) is down (\(config.errorKind?.rawValue ?? "error"): \(config.errorText ?? ""))"
        let probe = await dispatcher.health.nextProbe(of: config, now: now)
        let decision = DeliveryPolicy.retryOrGiveUp(
            attemptsAfter: message.attempts, expiresAt: message.expiresAt, now: now, retry: before.retry,
            random: dispatcher.random(), notBefore: probe)
        await dispatcher.finish(claimed, outcome(decision, attempts: [], config: config, route: plan.route,
            error: DeliveryError(kind: .temporaryFailure, text: reason, isTemporary: true)))
    }

    /// What follows a try of the tenant's server: `DeliveryPolicy.decide`, then the outcome.
    @inline(never) private func settle(
        _ completion: PoolCompletion, config: SMTPConfigRecord, before: Dispatcher.BeforeTry, assembled: MessageAssembler.Assembled,
        server: String?, started: Double
    ) async {
        let number = message.attempts + 1
        let context = TryContext(
            attemptsAfter: number, expiresAt: message.expiresAt, now: started, retry: before.retry,
            random: dispatcher.random(), tenant: before.tenant)
        // The policy trips to the relay only for `fallback = platform`, which is exactly when
        // the plan has a fallback identity.
        let decision = DeliveryPolicy.decide(completion, context)
        let attempt = attemptRecord(number: number, config: config, route: plan.route, server: server, outcome: decision.attemptOutcome,
            completion: completion, started: started)
        if decision.trips, case .failed(let error) = completion { await dispatcher.markError(config, error: error) }
        switch (decision, completion) {
        case (.notStarted, _):
            await dispatcher.release(claimed)
        case (.sent, .sent(let report)):
            // Most sends go through a configuration that is verified already: no actor hop then.
            if config.status != .verified { await dispatcher.markVerified(config) }
            await dispatcher.finish(claimed, sent(report, assembled: assembled, attempts: [attempt], config: config, route: plan.route))
        case (.tripAndFallBack, _):
            await viaPlatform(identity: plan.fallbackIdentity ?? plan.identity, route: .fallback, earlier: [attempt])
        case (_, .failed(let error)):
            await dispatcher.finish(claimed, outcome(decision, attempts: [attempt], config: config, route: plan.route, error: error))
        default:
            await dispatcher.release(claimed)
        }
    }

    /// Through the platform relay: platform mail (route `platform`), or a configuration's
    /// mail on its fallback (route `fallback`, after `earlier` tries of the tenant's server).
    private func viaPlatform(identity: SenderIdentity, route: RouteStep, earlier: [AttemptRecord]) async {
        // The relay is the platform's: it signs for the From domain whatever the tenant's dkim says.
        guard let assembled = await prepare(identity: identity, dkim: .platform, config: nil, route: route, earlier: earlier) else { return }
        let pool = await dispatcher.platformPool()
        let started = now
        let completion = await pool.perform(.send(from: assembled.envelopeFrom, to: assembled.recipients, data: assembled.composed.bytes))
        await settlePlatform(completion, route: route, earlier: earlier, assembled: assembled, server: pool.endpoint.server, started: started)
    }

    /// What follows a try of the relay (not inlined, as `settle`).
    @inline(never) private func settlePlatform(
        _ completion: PoolCompletion, route: RouteStep, earlier: [AttemptRecord], assembled: MessageAssembler.Assembled,
        server: String, started: Double
    ) async {
        let number = message.attempts + earlier.count + 1
        let decision = DeliveryPolicy.decide(completion, TryContext(
            attemptsAfter: number, expiresAt: message.expiresAt, now: now, retry: await dispatcher.retryPolicy,
            random: dispatcher.random(), tenant: nil))
        let attempt = attemptRecord(number: number, config: nil, route: route, server: server,
            outcome: decision.attemptOutcome, completion: completion, started: started)
        switch (decision, completion) {
        case (.notStarted, _):
            if earlier.isEmpty {
                await dispatcher.release(claimed)
            } else {
                // The tenant's server was tried: keep that record, and try again as soon as we run.
                await dispatcher.finish(claimed, DeliveryOutcome(
                    status: .deferred, attempts: earlier, nextAttemptAt: now, route: route,
                    errorKind: earlier.last?.errorKind, error: earlier.last?.response))
            }
        case (.sent, .sent(let report)):
            await dispatcher.finish(claimed, sent(report, assembled: assembled, attempts: earlier + [attempt], config: nil, route: route))
        case (_, .failed(let error)):
            await dispatcher.finish(claimed, outcome(decision, attempts: earlier + [attempt], config: nil, route: route, error: error))
        default:
            await dispatcher.release(claimed)
        }
    }

    /// Composition and signing; a row that cannot be composed fails `invalid_message`.
    private func prepare(
        identity: SenderIdentity, dkim: DKIMMode, config: SMTPConfigRecord?, route: RouteStep, earlier: [AttemptRecord]
    ) async -> MessageAssembler.Assembled? {
        let started = now
        var assembled: MessageAssembler.Assembled
        do {
            assembled = try MessageAssembler.assemble(message, attachments: claimed.attachments, identity: identity, now: Date(timeIntervalSince1970: started))
        } catch {
            let failure = DeliveryError(kind: .invalidMessage, text: "\(error)", isTemporary: false)
            let attempt = attemptRecord(number: message.attempts + earlier.count + 1, config: config, route: route, server: nil,
                outcome: .failed, completion: .failed(failure), started: started)
            await dispatcher.finish(claimed, outcome(.failed, attempts: earlier + [attempt], config: config, route: route, error: failure))
            return nil
        }
        let keys = await dispatcher.signingKeys(from: identity.address, mode: dkim)
        if !keys.isEmpty {
            do {
                assembled.composed.bytes = try DKIMSigner.sign(assembled.composed.bytes, keys: keys, now: Date(timeIntervalSince1970: started))
            } catch {
                await dispatcher.logSigningFailed(message, error: error)
            }
        }
        return assembled
    }

    // MARK: - Records

    private func attemptRecord(
        number: Int, config: SMTPConfigRecord?, route: RouteStep, server: String?, outcome: AttemptOutcome,
        completion: PoolCompletion, started: Double
    ) -> AttemptRecord {
        var record = AttemptRecord(
            id: nil, messageId: message.id!, attempt: number, at: started, configId: config?.id, configLabel: config?.label ?? "platform",
            route: route, server: server, outcome: outcome, errorKind: nil, smtpCode: nil, enhancedCode: nil, response: nil,
            refusedRecipients: nil, durationS: now - started)
        switch completion {
        case .sent(let report):
            record.smtpCode = report.reply?.code
            record.enhancedCode = report.reply?.enhancedCode
            record.response = report.reply?.line
            if !report.refused.isEmpty {
                record.refusedRecipients = String(decoding: (try? JSONEncoder().encode(report.refused)) ?? Data(), as: UTF8.self)
            }
        case .failed(let error):
            record.errorKind = error.kind.rawValue
            record.smtpCode = error.smtpCode
            record.enhancedCode = error.enhancedCode
            record.response = error.text
        case .verified, .notStarted:
            break
        }
        return record
    }

    private func sent(
        _ report: SendReport, assembled: MessageAssembler.Assembled, attempts: [AttemptRecord], config: SMTPConfigRecord?, route: RouteStep
    ) -> DeliveryOutcome {
        let refused = report.refused
        return DeliveryOutcome(
            status: .sent, attempts: attempts, configId: config?.id, route: route,
            errorKind: refused.isEmpty ? nil : DeliveryError.Kind.recipientRejected.rawValue,
            error: refused.isEmpty ? nil : "refused: " + refused.map { "\($0.address) (\($0.reply))" }.joined(separator: "; "),
            smtpResponse: report.reply?.line, messageIdHeader: "<\(assembled.composed.messageID)>", sentAt: now)
    }

    private func outcome(
        _ decision: Decision, attempts: [AttemptRecord], config: SMTPConfigRecord?, route: RouteStep, error: DeliveryError
    ) -> DeliveryOutcome {
        var result = DeliveryOutcome(
            status: .deferred, attempts: attempts, configId: config?.id, route: route, errorKind: error.kind.rawValue, error: error.text)
        switch decision {
        case .deferred(let until), .tripAndWait(let until): result.nextAttemptAt = until
        case .failed, .tripAndFail: result.status = .failed
        case .expired, .tripAndExpire: result.status = .expired
        case .sent: result.status = .sent
        case .tripAndFallBack, .notStarted: break
        }
        return result
    }
}
