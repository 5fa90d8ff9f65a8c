import Foundation
import Logging
import ServiceLifecycle

/// The queue manager: claims due messages in order, routes each one, hands it to its
/// configuration's connection pool, and records what happened (SPEC §3, §4).
///
/// It never blocks a cooperative thread: SQLite work goes through GRDB's async API and
/// SMTP through pools whose transport keeps the waiting off it (`CurlMultiTransport`: one engine thread).
public actor Dispatcher: Service {
    private(set) var settings: MailrouteConfiguration
    let store: QueueStore
    let secrets: SecretBox?
    let logger: Logger
    let notifier: SystemdNotifier
    let now: @Sendable () -> Double
    let random: @Sendable () -> Double
    private var platformPassword: String?
    private var keyring: DKIMKeyring
    /// Domains already logged as having no DKIM key, so the notice comes once per load.
    private var unsignedDomains: Set<String> = []

    private var pools: [PoolKey: any SMTPPool] = [:]
    let transport: any SMTPTransport
    private var routing = RoutingTable(configs: [], routes: [])
    private var lastProbe: [Int64: Double] = [:]
    private var probing: Set<Int64> = []
    private var inFlight = 0
    /// Set when this daemon changed a configuration's status: the next claim must see it.
    private var routingDirty = true
    private let stop = StopFlag()
    private let doorbell = Doorbell()
    private let writer: OutcomeWriter

    enum PoolKey: Hashable {
        case config(id: Int64, version: Int)
        case platform
    }

    public init(
        settings: MailrouteConfiguration, store: QueueStore, secrets: SecretBox?, logger: Logger,
        notifier: SystemdNotifier = SystemdNotifier(), transport: any SMTPTransport = CurlMultiTransport(),
        now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 },
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) throws {
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.logger = logger
        self.notifier = notifier
        self.transport = transport
        self.now = now
        self.random = random
        self.writer = OutcomeWriter(store: store)
        platformPassword = try Self.readPlatformPassword(settings)
        keyring = Self.loadKeyring(settings, logger: logger)
    }

    /// Reads the keys directory; a bad file is logged and skipped, never fatal: unsigned
    /// mail still arrives, a stopped daemon sends nothing.
    static func loadKeyring(_ settings: MailrouteConfiguration, logger: Logger) -> DKIMKeyring {
        let keyring = DKIMKeyring.load(directory: settings.dkim.keysDirectory)
        guard keyring.directoryExists else {
            logger.notice("no DKIM keys directory; mail leaves unsigned", metadata: ["dir": "\(keyring.directory)"])
            return keyring
        }
        for entry in keyring.entries {
            switch entry.result {
            case .success(let key):
                logger.info("DKIM key loaded", metadata: [
                    "file": "\(entry.file)", "domain": "\(key.domain)", "selector": "\(key.selector)", "algorithm": "\(key.algorithm.rawValue)",
                ])
            case .failure(let error):
                logger.error("DKIM key skipped", metadata: ["file": "\(entry.file)", "error": "\(error)"])
            }
            if let warning = entry.warning {
                logger.warning("DKIM key file \(warning)", metadata: ["file": "\(entry.file)"])
            }
        }
        return keyring
    }

    static func readPlatformPassword(_ settings: MailrouteConfiguration) throws -> String? {
        let file = settings.platform.passwordFile
        guard !file.isEmpty else { return nil }
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigFileError("platform.password_file \(file) cannot be read")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
    }

    /// Takes a re-read config file. Pools are rebuilt on next use, since timeouts and the relay
    /// may have changed; sends in hand finish on the old ones. The queue database stays the one
    /// opened at start.
    public func reload(_ new: MailrouteConfiguration) async throws {
        let password = try Self.readPlatformPassword(new)
        var next = new
        next.queue.path = settings.queue.path
        settings = next
        platformPassword = password
        keyring = Self.loadKeyring(next, logger: logger)
        unsignedDomains = []
        routingDirty = true
        let old = Array(pools.values)
        pools.removeAll()
        for pool in old { Task { await pool.close() } }
    }

    // MARK: - The loop

    public func run() async throws {
        let watcher = try ChangeWatcher(path: store.path)
        let stop = self.stop
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                await self.loop(watcher: watcher, group: &group)
                // Stop taking work: queued jobs come back as not started, sends in hand finish.
                await self.closeAllPools()
            }
        } onGracefulShutdown: { [doorbell, notifier] in
            // Tell systemd at once; the drain that follows is what TimeoutStopSec bounds.
            notifier.stopping()
            stop.set()
            doorbell.ring()
        }
    }

    private func loop(watcher: ChangeWatcher, group: inout DiscardingTaskGroup) async {
        var lastCycle = 0.0
        var nextDue: Double? = nil
        var lastExpiry = 0.0
        var lastRouting = -Double.infinity
        var lastHousekeeping = 0.0
        var lastPing = -Double.infinity
        let pingInterval = notifier.watchdogInterval()
        while !stop.isSet {
            let t = now()
            // From the loop itself: a loop that stalls stops pinging, and systemd restarts it.
            if let pingInterval, t - lastPing >= pingInterval {
                lastPing = t
                notifier.watchdog()
            }
            // Commits by anyone (enqueuers, the CLI, our own results) show in data_version;
            // time-based work shows in nextDue; the poll interval is only a safety net.
            if watcher.changed() || t >= (nextDue ?? .infinity) || t - lastCycle >= settings.queue.pollIntervalSeconds {
                lastCycle = t
                do {
                    if try await store.hasWork(now: t) {
                        let expire = t - lastExpiry >= 1
                        if expire { lastExpiry = t }
                        if routingDirty || t - lastRouting >= 0.25 {
                            lastRouting = t
                            try await refreshRouting()
                        }
                        let claimed = try await claim(now: t, expire: expire)
                        let table = routing
                        for message in claimed {
                            inFlight += 1
                            group.addTask { await self.deliver(message, table: table) }
                        }
                        nextDue = claimed.isEmpty ? try await store.nextDueTime() : t
                    } else {
                        nextDue = try await store.nextDueTime()
                    }
                } catch {
                    logger.error("queue cycle failed", metadata: ["error": "\(error)"])
                }
            }
            if t - lastHousekeeping >= 1 {
                lastHousekeeping = t
                if t - lastRouting >= 1 {
                    lastRouting = t
                    try? await refreshRouting()
                }
                await housekeeping(now: t)
            }
            await doorbell.wait(timeout: .milliseconds(50))
        }
    }

    /// Routing changes with every `config` or `route` command; the tables are small.
    private func refreshRouting() async throws {
        let store = self.store
        routingDirty = false
        routing = try await store.pool.read { db in
            RoutingTable(configs: try SMTPConfigRecord.fetchAll(db), routes: try RouteRecord.fetchAll(db))
        }
        retireStalePools()
    }

    private func claim(now t: Double, expire: Bool) async throws -> [ClaimedMessage] {
        let table = routing
        let settings = self.settings
        // How many more messages each pool can take: its connections, plus one waiting each.
        var room: [Int64?: Int] = [:]
        for (key, pool) in pools {
            let free = pool.limits.maxConnections * 2 - pool.load
            switch key {
            case .platform: room[nil] = free
            case .config(let id, _): room[id] = free
            }
        }
        let globalRoom = max(0, 2000 - inFlight)
        let defaultRoom: @Sendable (Int64?) -> Int = { id in
            guard let id, let config = table.configs[id] else { return settings.delivery.defaultMaxConnections * 2 }
            return (config.maxConnections ?? settings.delivery.defaultMaxConnections) * 2
        }
        let snapshot = room
        return try await store.claim(
            now: t, leaseSeconds: settings.queue.leaseSeconds, expire: expire,
            admit: { rows in rows.map { Self.admission(for: $0, table: table, settings: settings) } },
            pick: { candidates in
                var room = snapshot
                var chosen: [Int64] = []
                for candidate in candidates where chosen.count < globalRoom {
                    var target = candidate.configId
                    if let id = target, let config = table.configs[id], DeliveryPolicy.isDown(config) {
                        // A down configuration's mail goes to the relay, or is only put back to wait.
                        if config.fallback == .none {
                            chosen.append(candidate.id)
                            continue
                        }
                        target = nil
                    }
                    let free = room[target] ?? defaultRoom(target)
                    guard free > 0 else { continue }
                    room[target] = free - 1
                    chosen.append(candidate.id)
                }
                return chosen
            })
    }

    static func admission(for row: AdmissionRow, table: RoutingTable, settings: MailrouteConfiguration) -> Admission {
        let resolution = Router.resolve(row.keys, in: table)
        let category = settings.category(row.keys.category ?? "")
        let own = row.priority ?? category.priority
        let effective = min(own, resolution.config?.priority ?? own)
        return Admission(
            id: row.id, effectivePriority: effective, configId: resolution.config?.id, route: resolution.step,
            dueAt: row.sendAt ?? row.createdAt,
            expiresAt: row.expiresAt ?? category.ttlSeconds.map { row.createdAt + $0 })
    }

    // MARK: - One message

    private func deliver(_ claimed: ClaimedMessage, table: RoutingTable) async {
        defer {
            inFlight -= 1
            doorbell.ring()
        }
        let message = claimed.message
        let t = now()
        if let expires = message.expiresAt, expires <= t {
            await finish(claimed, DeliveryOutcome(status: .expired, attempts: [], errorKind: "expired", error: "expired before it could be delivered"))
            return
        }
        let keys = RoutingKeys(tenant: message.tenant, advertiser: message.advertiser, cname: message.cname, category: message.category)
        let resolution = Router.resolve(keys, in: table)
        guard let config = resolution.config else {
            let identity = SenderIdentity(
                address: message.mailFrom ?? settings.platform.fromAddress,
                name: message.fromName ?? nonEmpty(settings.platform.fromName), replyTo: message.replyTo)
            await sendViaPlatform(claimed, identity: identity, route: .platform, earlier: [])
            return
        }

        var identity = SenderIdentity(
            address: config.fromAddress, name: message.fromName ?? config.fromName, replyTo: message.replyTo ?? config.replyTo)
        if let override = message.mailFrom {
            if SenderAuthorization.isAuthorized(override, domains: config.authorizedDomainList, senders: config.authorizedSenderList) {
                identity.address = override
            } else if config.blockUnauthorized {
                logger.warning("sender not authorized; message refused", metadata: meta(message, config: config, ["from": "\(override)"]))
                let attempt = attemptRecord(message, number: message.attempts + 1, config: config, route: resolution.step, server: nil, outcome: .failed,
                    error: DeliveryError(kind: .senderUnauthorized, text: "\(override) is not an authorized sender of \(config.label)", isTemporary: false), started: t)
                await finish(claimed, DeliveryOutcome(status: .failed, attempts: [attempt], configId: config.id, route: resolution.step,
                    errorKind: DeliveryError.Kind.senderUnauthorized.rawValue, error: attempt.response))
                return
            } else {
                logger.warning("sender not authorized; sent anyway", metadata: meta(message, config: config, ["from": "\(override)"]))
                identity.address = override
            }
        }

        if DeliveryPolicy.isDown(config) {
            let reason = "\(config.label) is down (\(config.errorKind?.rawValue ?? "error"): \(config.errorText ?? ""))"
            if config.fallback == .platform {
                await sendViaPlatform(claimed, identity: fallbackIdentity(message, config: config, original: identity), route: .fallback, earlier: [], note: reason)
            } else {
                let verdict = DeliveryPolicy.retryOrGiveUp(
                    attemptsAfter: message.attempts, expiresAt: message.expiresAt, now: t, retry: RetryPolicy(settings.delivery),
                    random: random(), notBefore: (config.statusChangedAt ?? t) + settings.delivery.cooldownSeconds)
                await finish(claimed, outcome(for: verdict, attempts: [], config: config, route: resolution.step,
                    error: DeliveryError(kind: .temporaryFailure, text: reason, isTemporary: true)))
            }
            return
        }

        let assembled: MessageAssembler.Assembled
        do {
            assembled = try await Self.prepare(message, attachments: claimed.attachments, identity: identity,
                keys: signingKeys(from: identity.address, serverSigns: config.dkim == .server), now: now(), logger: logger)
        } catch {
            await failInvalid(claimed, reason: "\(error)", config: config, route: resolution.step)
            return
        }
        guard let pool = pool(for: config) else {
            let error = DeliveryError(kind: .authFailed, text: "the stored password cannot be decrypted (is the key missing or replaced?)", isTemporary: false)
            await handleConfigFailure(claimed, config: config, route: resolution.step, error: error, identity: identity, earlier: [])
            return
        }
        let number = message.attempts + 1
        let (completion, attempt) = await send(message, assembled: assembled, pool: pool, number: number, config: config, route: resolution.step)
        switch completion {
        case .notStarted:
            await release(claimed)
        case .verified:
            break
        case .sent(let report):
            await markVerified(config)
            await finish(claimed, sentOutcome(report, assembled: assembled, attempts: [attempt], config: config, route: resolution.step))
        case .failed(let error):
            let verdict = DeliveryPolicy.verdict(
                for: .failure(error), attemptsAfter: number, expiresAt: message.expiresAt, now: now(),
                fallback: config.fallback, viaPlatform: false, retry: RetryPolicy(settings.delivery), random: random())
            if case .configurationFailed = verdict {
                await handleConfigFailure(claimed, config: config, route: resolution.step, error: error, identity: identity, earlier: [attempt])
            } else {
                await finish(claimed, outcome(for: verdict, attempts: [attempt], config: config, route: resolution.step, error: error))
            }
        }
    }

    /// SPEC §4: the configuration goes to `error`; the message falls back at once or waits.
    private func handleConfigFailure(
        _ claimed: ClaimedMessage, config: SMTPConfigRecord, route: RouteStep, error: DeliveryError,
        identity: SenderIdentity, earlier: [AttemptRecord]
    ) async {
        await markError(config, error: error)
        var attempts = earlier
        if config.fallback == .platform {
            if !attempts.isEmpty { attempts[attempts.count - 1].outcome = .fallback }
            await sendViaPlatform(claimed, identity: fallbackIdentity(claimed.message, config: config, original: identity), route: .fallback, earlier: attempts)
        } else {
            let message = claimed.message
            let verdict = DeliveryPolicy.retryOrGiveUp(
                attemptsAfter: message.attempts + attempts.count, expiresAt: message.expiresAt, now: now(),
                retry: RetryPolicy(settings.delivery), random: random(), notBefore: now() + settings.delivery.cooldownSeconds)
            await finish(claimed, outcome(for: verdict, attempts: attempts, config: config, route: route, error: error))
        }
    }

    /// Keeps the brand's name, sends from the platform's address, and lets replies reach the brand.
    private func fallbackIdentity(_ message: MessageRecord, config: SMTPConfigRecord, original: SenderIdentity) -> SenderIdentity {
        SenderIdentity(
            address: settings.platform.fromAddress,
            name: original.name ?? nonEmpty(settings.platform.fromName),
            replyTo: message.replyTo ?? config.replyTo ?? original.address)
    }

    private func sendViaPlatform(
        _ claimed: ClaimedMessage, identity: SenderIdentity, route: RouteStep, earlier: [AttemptRecord], note: String? = nil
    ) async {
        let message = claimed.message
        let assembled: MessageAssembler.Assembled
        do {
            // The platform relay does not sign, whatever the tenant's `dkim` says: the platform does.
            assembled = try await Self.prepare(message, attachments: claimed.attachments, identity: identity,
                keys: signingKeys(from: identity.address, serverSigns: false), now: now(), logger: logger)
        } catch {
            await failInvalid(claimed, reason: "\(error)", config: nil, route: route, earlier: earlier)
            return
        }
        let pool = platformPool()
        let number = message.attempts + earlier.count + 1
        let (completion, attempt) = await send(message, assembled: assembled, pool: pool, number: number, config: nil, route: route)
        let attempts = earlier + [attempt]
        switch completion {
        case .notStarted:
            if earlier.isEmpty {
                await release(claimed)
            } else {
                // The tenant's server was tried: keep that record, and try again as soon as we run.
                await finish(claimed, DeliveryOutcome(status: .deferred, attempts: earlier, nextAttemptAt: now(), route: route,
                    errorKind: earlier.last?.errorKind, error: earlier.last?.response))
            }
        case .verified:
            break
        case .sent(let report):
            await finish(claimed, sentOutcome(report, assembled: assembled, attempts: attempts, config: nil, route: route))
        case .failed(let error):
            // The relay failing is never final unless the message itself was refused.
            let verdict = DeliveryPolicy.verdict(
                for: .failure(error), attemptsAfter: message.attempts + attempts.count, expiresAt: message.expiresAt, now: now(),
                fallback: .none, viaPlatform: true, retry: RetryPolicy(settings.delivery), random: random())
            await finish(claimed, outcome(for: verdict, attempts: attempts, config: nil, route: route, error: error))
        }
    }

    /// The keys that sign mail from `address`: none when the tenant's own server signs.
    private func signingKeys(from address: String, serverSigns: Bool) -> [DKIMKey] {
        let keys = keyring.signingKeys(forSender: address, mode: serverSigns ? .server : .platform)
        guard !serverSigns, let at = address.lastIndex(of: "@") else { return keys }
        let domain = SenderAuthorization.normalizeDomain(address[address.index(after: at)...])
        if keys.isEmpty, keyring.directoryExists, unsignedDomains.insert(domain).inserted {
            logger.notice("no DKIM key for this domain; its mail leaves unsigned", metadata: ["domain": "\(domain)", "dir": "\(keyring.directory)"])
        }
        return keys
    }

    /// Composes and signs off the actor: an RSA signature costs about a millisecond, and
    /// the dispatcher must keep claiming meanwhile.
    nonisolated static func prepare(
        _ message: MessageRecord, attachments: [AttachmentRecord], identity: SenderIdentity, keys: [DKIMKey], now: Double, logger: Logger
    ) async throws -> MessageAssembler.Assembled {
        var assembled = try MessageAssembler.assemble(message, attachments: attachments, identity: identity, now: Date(timeIntervalSince1970: now))
        guard !keys.isEmpty else { return assembled }
        do {
            assembled.composed.bytes = try DKIMSigner.sign(assembled.composed.bytes, keys: keys, now: Date(timeIntervalSince1970: now))
        } catch {
            // A key that cannot sign is the platform's problem, not the message's: it goes unsigned.
            logger.error("DKIM signing failed; sent unsigned", metadata: [LogKey.id: "\(message.id ?? 0)", "error": "\(error)"])
        }
        return assembled
    }

    private func send(
        _ message: MessageRecord, assembled: MessageAssembler.Assembled, pool: any SMTPPool, number: Int,
        config: SMTPConfigRecord?, route: RouteStep
    ) async -> (PoolCompletion, AttemptRecord) {
        let started = now()
        let completion = await pool.perform(.send(from: assembled.envelopeFrom, to: assembled.recipients, data: assembled.composed.bytes))
        var attempt = attemptRecord(message, number: number, config: config, route: route, server: pool.endpoint.server, outcome: .sent, error: nil, started: started)
        switch completion {
        case .sent(let report):
            attempt.smtpCode = report.reply?.code
            attempt.enhancedCode = report.reply?.enhancedCode
            attempt.response = report.reply?.line
            if !report.refused.isEmpty {
                attempt.refusedRecipients = String(decoding: (try? JSONEncoder().encode(report.refused)) ?? Data(), as: UTF8.self)
            }
        case .failed(let error):
            attempt = attemptRecord(message, number: number, config: config, route: route, server: pool.endpoint.server, outcome: .deferred, error: error, started: started)
        case .notStarted, .verified:
            break
        }
        return (completion, attempt)
    }

    // MARK: - Outcomes

    private func sentOutcome(
        _ report: SendReport, assembled: MessageAssembler.Assembled, attempts: [AttemptRecord], config: SMTPConfigRecord?, route: RouteStep
    ) -> DeliveryOutcome {
        var attempts = attempts
        attempts[attempts.count - 1].outcome = .sent
        let refused = report.refused.map(\.address)
        return DeliveryOutcome(
            status: .sent, attempts: attempts, configId: config?.id, route: route,
            errorKind: refused.isEmpty ? nil : DeliveryError.Kind.recipientRejected.rawValue,
            error: refused.isEmpty ? nil : "refused: " + report.refused.map { "\($0.address) (\($0.reply))" }.joined(separator: "; "),
            smtpResponse: report.reply?.line, messageIdHeader: "<\(assembled.composed.messageID)>", sentAt: now())
    }

    private func outcome(
        for verdict: DeliveryVerdict, attempts: [AttemptRecord], config: SMTPConfigRecord?, route: RouteStep, error: DeliveryError
    ) -> DeliveryOutcome {
        var attempts = attempts
        var result = DeliveryOutcome(status: .deferred, attempts: [], configId: config?.id, route: route, errorKind: error.kind.rawValue, error: error.text)
        switch verdict {
        case .deferred(let until):
            result.nextAttemptAt = until
            if !attempts.isEmpty, attempts[attempts.count - 1].outcome != .fallback { attempts[attempts.count - 1].outcome = .deferred }
        case .failed, .configurationFailed:
            result.status = .failed
            if !attempts.isEmpty { attempts[attempts.count - 1].outcome = .failed }
        case .expired:
            result.status = .expired
            if !attempts.isEmpty { attempts[attempts.count - 1].outcome = .deferred }
        case .sent:
            result.status = .sent
        }
        result.attempts = attempts
        return result
    }

    private func failInvalid(_ claimed: ClaimedMessage, reason: String, config: SMTPConfigRecord?, route: RouteStep, earlier: [AttemptRecord] = []) async {
        let error = DeliveryError(kind: .invalidMessage, text: reason, isTemporary: false)
        let attempt = attemptRecord(claimed.message, number: claimed.message.attempts + earlier.count + 1, config: config, route: route,
            server: nil, outcome: .failed, error: error, started: now())
        await finish(claimed, DeliveryOutcome(status: .failed, attempts: earlier + [attempt], configId: config?.id, route: route,
            errorKind: error.kind.rawValue, error: reason))
    }

    private func finish(_ claimed: ClaimedMessage, _ outcome: DeliveryOutcome) async {
        do {
            try await writer.write(id: claimed.id, outcome: outcome)
        } catch {
            // The lease runs out and the row is retried: at-least-once holds.
            logger.error("could not record a delivery", metadata: [LogKey.id: "\(claimed.id)", "error": "\(error)"])
        }
        for attempt in outcome.attempts { logAttempt(claimed.message, attempt, status: outcome.status) }
        if outcome.attempts.isEmpty { logAttempt(claimed.message, nil, status: outcome.status, reason: outcome.error) }
    }

    private func release(_ claimed: ClaimedMessage) async {
        try? await store.releaseLeases(ids: [claimed.id])
    }

    // MARK: - Configuration status

    private func markVerified(_ config: SMTPConfigRecord) async {
        guard config.status != .verified, let id = config.id else { return }
        let changed = (try? await store.recordConfigStatus(
            id: id, settingsVersion: config.settingsVersion, status: .verified, errorKind: nil, errorText: nil)) ?? false
        if changed {
            routingDirty = true
            logger.notice("configuration status changed", metadata: [LogKey.config: "\(config.label)", "status": "verified", "was": "\(config.status.rawValue)"])
        }
    }

    private func markError(_ config: SMTPConfigRecord, error: DeliveryError) async {
        guard let id = config.id else { return }
        let changed = (try? await store.recordConfigStatus(id: id, settingsVersion: config.settingsVersion, status: .error,
            errorKind: error.configErrorKind, errorText: error.text)) ?? false
        lastProbe[id] = now()
        routingDirty = true
        if changed && (config.status != .error || config.errorKind != error.configErrorKind) {
            logger.warning("configuration status changed", metadata: [
                LogKey.config: "\(config.label)", "status": "error", "kind": "\(error.configErrorKind.rawValue)",
                "response": "\(error.text)", "fallback": "\(config.fallback.rawValue)",
            ])
        }
    }

    /// After the cool-down, one verify at a time tells whether a down configuration is back.
    private func housekeeping(now t: Double) async {
        for config in routing.configs.values where config.enabled && DeliveryPolicy.isDown(config) {
            guard let id = config.id, !probing.contains(id),
                t >= max(config.statusChangedAt ?? 0, lastProbe[id] ?? 0) + settings.delivery.cooldownSeconds,
                let pool = pool(for: config)
            else { continue }
            probing.insert(id)
            lastProbe[id] = t
            Task {
                let result = await pool.perform(.verify)
                await self.probeFinished(config, result)
            }
        }
        if t - lastPurge >= 600 {
            lastPurge = t
            if settings.queue.retentionDays > 0 {
                let cutoff = t - Double(settings.queue.retentionDays) * 86400
                if let purged = try? await store.purgeSent(before: cutoff), purged > 0 {
                    logger.info("purged sent messages past retention", metadata: ["count": "\(purged)"])
                }
            }
        }
        if t - lastStatus >= 5 {
            lastStatus = t
            if let counts = try? await store.countsAsync(now: t) {
                let inError = routing.configs.values.filter { $0.status == .error }.count
                notifier.status("queued \(counts.queued), deferred \(counts.deferred), sending \(counts.sending), sent last minute \(counts.sentLastMinute), configurations in error \(inError)")
            }
        }
    }

    private var lastPurge = 0.0
    private var lastStatus = 0.0

    private func probeFinished(_ config: SMTPConfigRecord, _ completion: PoolCompletion) async {
        probing.remove(config.id!)
        switch completion {
        case .verified:
            await markVerified(config)
        case .failed(let error):
            logger.info("probe failed; configuration stays down", metadata: [LogKey.config: "\(config.label)", "response": "\(error.text)"])
        default:
            break
        }
    }

    // MARK: - Pools

    private func pool(for config: SMTPConfigRecord) -> (any SMTPPool)? {
        guard let id = config.id else { return nil }
        let key = PoolKey.config(id: id, version: config.settingsVersion)
        if let pool = pools[key] { return pool }
        let password: String?
        do {
            password = try config.passwordSealed.map { sealed in
                guard let secrets else { throw SecretError.noKey(searched: [], sealedPasswords: 1) }
                return try secrets.open(sealed)
            }
        } catch {
            return nil
        }
        let delivery = settings.delivery
        let endpoint = SMTPEndpoint(config: config, password: password, delivery: delivery)
        let pool = transport.makePool(
            name: config.label, endpoint: endpoint,
            limits: .init(
                maxConnections: config.maxConnections ?? delivery.defaultMaxConnections,
                maxMessagesPerConnection: delivery.maxMessagesPerConnection, idleTimeout: delivery.idleTimeoutSeconds,
                ratePerMinute: config.ratePerMinute))
        pools[key] = pool
        return pool
    }

    private func platformPool() -> any SMTPPool {
        if let pool = pools[.platform] { return pool }
        let p = settings.platform
        let delivery = settings.delivery
        let endpoint = SMTPEndpoint(
            host: p.host, port: p.port, security: p.security, username: nonEmpty(p.username), password: platformPassword,
            caFile: nonEmpty(p.caFile), heloName: delivery.effectiveHeloName, connectTimeoutSeconds: delivery.connectTimeoutSeconds,
            commandTimeoutSeconds: delivery.commandTimeoutSeconds, maxIdleSeconds: delivery.idleTimeoutSeconds)
        let pool = transport.makePool(
            name: "platform", endpoint: endpoint,
            limits: .init(
                maxConnections: delivery.defaultMaxConnections, maxMessagesPerConnection: delivery.maxMessagesPerConnection,
                idleTimeout: delivery.idleTimeoutSeconds))
        pools[.platform] = pool
        return pool
    }

    /// A configuration whose connection settings changed (or that was deleted) loses its pool.
    private func retireStalePools() {
        for key in pools.keys {
            guard case .config(let id, let version) = key else { continue }
            if routing.configs[id]?.settingsVersion != version, let pool = pools.removeValue(forKey: key) {
                Task { await pool.close() }
            }
        }
    }

    /// Side by side: a thousand pools each QUITting in turn would outlast TimeoutStopSec.
    private func closeAllPools() async {
        let all = Array(pools.values)
        pools.removeAll()
        await withDiscardingTaskGroup { group in
            for pool in all { group.addTask { await pool.close() } }
        }
    }

    // MARK: - Logging

    private func attemptRecord(
        _ message: MessageRecord, number: Int, config: SMTPConfigRecord?, route: RouteStep, server: String?,
        outcome: AttemptOutcome, error: DeliveryError?, started: Double
    ) -> AttemptRecord {
        AttemptRecord(
            id: nil, messageId: message.id!, attempt: number, at: started, configId: config?.id, configLabel: config?.label ?? "platform",
            route: route, server: server, outcome: outcome, errorKind: error?.kind.rawValue, smtpCode: error?.smtpCode,
            enhancedCode: error?.enhancedCode, response: error?.text, refusedRecipients: nil, durationS: now() - started)
    }

    private func meta(_ message: MessageRecord, config: SMTPConfigRecord?, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var m: Logger.Metadata = [LogKey.id: "\(message.id ?? 0)", LogKey.tenant: "\(message.tenant ?? "-")"]
        if let config { m[LogKey.config] = "\(config.label)" }
        return m.merging(extra) { $1 }
    }

    private func logAttempt(_ message: MessageRecord, _ attempt: AttemptRecord?, status: MessageStatus, reason: String? = nil) {
        var m: Logger.Metadata = [
            LogKey.id: "\(message.id ?? 0)", LogKey.tenant: "\(message.tenant ?? "-")",
            LogKey.config: "\(attempt?.configLabel ?? "-")", LogKey.route: "\(attempt?.route?.rawValue ?? message.route?.rawValue ?? "-")",
            "to": "\(message.rcptTo)", LogKey.outcome: "\(attempt?.outcome.rawValue ?? status.rawValue)",
            "status": "\(status.rawValue)", "delay": "\(String(format: "%.2f", now() - (message.createdAt ?? now())))",
            "attempts": "\(attempt?.attempt ?? message.attempts)",
        ]
        if let code = attempt?.smtpCode { m[LogKey.code] = "\(code)" }
        if let response = attempt?.response ?? reason { m["response"] = "\(response)" }
        if let server = attempt?.server { m[LogKey.server] = "\(server)" }
        let level: Logger.Level = (attempt?.outcome == .sent || status == .sent) ? .info : .warning
        logger.log(level: level, "delivery", metadata: m)
    }
}

private func nonEmpty(_ s: String) -> String? { s.isEmpty ? nil : s }
