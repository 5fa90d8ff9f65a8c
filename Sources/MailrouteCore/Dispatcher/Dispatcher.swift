import Foundation
import Logging
import ServiceLifecycle

/// The queue manager's loop: claims due messages in order (each with its route resolved in
/// the claim), hands each to a `Delivery`, probes configurations that are down, and keeps
/// systemd informed (SPEC §3, §4, §7).
///
/// It never blocks a cooperative thread: the queue's work is async (GRDB's async API, or
/// PostgreSQL over NIO) and SMTP goes through pools whose transport keeps the waiting off it
/// (`CurlMultiTransport`: one engine thread). On a shared queue (SPEC §8) it also keeps its
/// leases alive and drives only the configurations whose connections it holds.
public actor Dispatcher: Service {
    private(set) var settings: MailrouteConfiguration
    let store: any QueueBackend
    let secrets: SecretBox?
    let logger: Logger
    let notifier: SystemdNotifier
    let transport: any SMTPTransport
    /// nil: nothing recorded (most tests).
    let metrics: MailrouteMetrics?
    let now: @Sendable () -> Double
    let random: @Sendable () -> Double
    private var platformPassword: String?
    private var keyring: DKIMKeyring
    /// Domains already logged as having no DKIM key, so the notice comes once per load.
    private var unsignedDomains: Set<String> = []

    private var pools: PoolRegistry
    /// Pools taken out of service, to be closed by the loop's task group.
    private var retired: [any SMTPPool] = []
    private(set) var health: ConfigHealth
    private var routing = RoutingTable(configs: [], routes: [])
    private var inFlight = 0
    private let stop: StopFlag
    private let doorbell = Doorbell()
    private let writer: OutcomeWriter
    private var lastPurge = 0.0
    private var lastStatus = 0.0
    /// Shared queue: the last time this daemon's leases were renewed, and whether the
    /// database has been unreachable since (said once in the log and in STATUS).
    private var lastRenewal: Double
    private var database = DatabaseHealth()
    /// Outcomes of sends that the database would not take yet (`OutcomeWriter`): no claims
    /// until they are written, or rows in hand whose lease ran out meanwhile would go twice.
    private var unrecorded = 0
    private var renewing = false
    /// Configurations whose idle pools were closed: the next claim gives them up.
    private var givenUp: Set<Int64> = []
    /// Shared queue: the claims in hand (their leases are what is renewed), how many of them
    /// go to each configuration (a configuration with claimed messages is busy even before they
    /// reach its pool), and the configurations whose connections the claims took.
    private var inHand: [Int64: ClaimedMessage] = [:]
    private var claimedFor: [Int64: Int] = [:]
    private var owned: Set<Int64> = []
    /// An outcome was committed since the last cycle: on SQLite `data_version` says so; on a
    /// server nothing does, and a pool that freed places would wait for the poll.
    private var finishedSinceCycle = false
    /// Configurations this daemon is handing over (it holds more than its share): no more
    /// claims for them; once their pool is empty it closes and they are given up.
    private var leaving: Set<Int64> = []

    public init(
        settings: MailrouteConfiguration, store: any QueueBackend, secrets: SecretBox?, logger: Logger,
        notifier: SystemdNotifier = SystemdNotifier(), transport: any SMTPTransport = CurlMultiTransport(),
        metrics: MailrouteMetrics? = nil,
        now: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 },
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
    ) throws {
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.logger = logger
        self.notifier = notifier
        self.transport = transport
        self.metrics = metrics
        self.pools = PoolRegistry(transport: transport, pacing: store.pacing)
        self.now = now
        self.random = random
        self.lastRenewal = now()
        let stop = StopFlag()
        self.stop = stop
        self.writer = OutcomeWriter(store: store, stop: stop)
        health = ConfigHealth(breakerTimeouts: settings.delivery.breakerTimeouts, cooldownSeconds: settings.delivery.cooldownSeconds)
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
            throw ConfigFileError("platform.password_file \(file) cannot be read: \(MailrouteConfiguration.whyUnreadable(file))")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
    }

    /// Takes a re-read config file. Pools are rebuilt on next use, since timeouts and the relay
    /// may have changed; sends in hand finish on the old ones. The queue database stays the one
    /// opened at start.
    public func reload(_ new: MailrouteConfiguration) async throws {
        let password = try Self.readPlatformPassword(new)
        var next = new
        // Where the queue lives stays as opened; its timings may change.
        next.queue.backend = settings.queue.backend
        next.queue.path = settings.queue.path
        next.queue.url = settings.queue.url
        next.queue.passwordFile = settings.queue.passwordFile
        next.queue.maxDatabaseConnections = settings.queue.maxDatabaseConnections
        settings = next
        platformPassword = password
        keyring = Self.loadKeyring(next, logger: logger)
        unsignedDomains = []
        health.breakerTimeouts = max(1, next.delivery.breakerTimeouts)
        health.cooldownSeconds = next.delivery.cooldownSeconds
        retired += pools.retireAll()
        doorbell.ring()
    }

    // MARK: - The loop

    public func run() async throws {
        await writer.report(to: self)
        metrics?.observePools { [weak self] in await self?.connections() ?? [:] }
        let wakeups = try store.wakeups(doorbell: doorbell)
        defer { wakeups.cancel() }
        let stop = self.stop
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { listener in
                // Apart from the deliveries' group: it runs until cancelled, they until done.
                listener.addTask { await wakeups.run() }
                // Counted among the living before the first claim, so that the first daemon of a
                // cluster starting together takes only its share of the configurations.
                try? await self.store.renewLeases(now: self.now(), until: self.now() + self.settings.queue.leaseSeconds, claims: [])
                await withDiscardingTaskGroup { group in
                    await self.loop(wakeups: wakeups, group: &group)
                    // Stop taking work: queued jobs come back as not started, sends in hand finish.
                    await self.closeAllPools()
                }
                listener.cancelAll()
            }
            try? await self.store.releaseConnections()
        } onGracefulShutdown: { [doorbell, notifier] in
            // Tell systemd at once; the drain that follows is what TimeoutStopSec bounds.
            notifier.stopping()
            stop.set()
            doorbell.ring()
        }
    }

    private func loop(wakeups: any QueueWakeups, group: inout DiscardingTaskGroup) async {
        var lastCycle = 0.0
        var nextDue: Double? = nil
        var lastExpiry = 0.0
        var lastHousekeeping = 0.0
        var lastPing = -Double.infinity
        var draining = false
        var admitting = false
        let pingInterval = notifier.watchdogInterval()
        while !stop.isSet {
            let t = now()
            // From the loop itself: a loop that stalls stops pinging, and systemd restarts it.
            if let pingInterval, t - lastPing >= pingInterval {
                lastPing = t
                notifier.watchdog()
            }
            // Commits by anyone (enqueuers, the CLI, our own results) show in data_version;
            // time-based work shows in nextDue; the poll interval is only a safety net. While
            // draining, a claim waits until a pool has room again (`PoolRegistry.wantsWork`) and
            // at least `pacing.claimSpacing` since the last, so one transaction claims several messages
            // instead of one per finished send; due rows still waiting for admission do not wait
            // for room.
            let spaced = t - lastCycle >= store.pacing.claimSpacing
            // Our own outcome commits count as a change only where a pool has room again, and
            // spaced like a draining claim: one claim per finished send would be a claim per message.
            let freed = finishedSinceCycle && spaced && pools.wantsWork()
            let changed = wakeups.changed() || freed
            let due = changed || t >= (nextDue ?? .infinity) || t - lastCycle >= settings.queue.pollIntervalSeconds
            var sawWork = false
            if due && database.mayTry(at: t) && unrecorded == 0 && (!draining || admitting || (spaced && pools.wantsWork()) || t - lastCycle >= settings.queue.pollIntervalSeconds) {
                lastCycle = t
                finishedSinceCycle = false
                do {
                    // Idle, a cheap read first: no write transaction when nothing is due.
                    let work = try await draining ? true : store.hasWork(now: t)
                    // Work seen for someone: asked and found, not assumed because we were draining.
                    sawWork = work && !draining
                    if work {
                        let expire = t - lastExpiry >= 1
                        if expire { lastExpiry = t }
                        // No routing read here: the claim routes inside its own transaction, and a
                        // pool for new settings is made on first use; retiring old pools can wait
                        // for the once-a-second refresh below.
                        let plan = claimPlan(now: t, expire: expire)
                        let batch = try await store.claimBatch(plan)
                        if let metrics {
                            for (id, count) in batch.expired { metrics.recordExpired(config: label(ofConfig: id), count: count) }
                        }
                        givenUp.subtract(plan.giveUp)
                        leaving.subtract(plan.giveUp)
                        owned.subtract(plan.giveUp)
                        owned.formUnion(batch.owned)
                        for message in batch.messages {
                            inFlight += 1
                            took(message)
                            group.addTask { await self.deliver(message) }
                        }
                        draining = !batch.messages.isEmpty
                        if draining { sawWork = true }
                        // More due rows than one claim admits: admit on at once, whether or not the
                        // pools have room. On a shared queue only while this daemon sends: one whose
                        // claims take nothing (another daemon drives the configurations) leaves the
                        // admitting to the daemons that do, instead of spending the cores they share.
                        admitting = !batch.admittedAll && (!store.isShared || !batch.messages.isEmpty)
                        nextDue = draining || admitting ? t : try await store.nextDueTime()
                    } else {
                        (draining, admitting) = (false, false)
                        nextDue = try await store.nextDueTime()
                    }
                    databaseAnswered(now: t)
                } catch {
                    (draining, admitting) = (false, false)
                    databaseFailed(error, now: t)
                }
                // Asleep (enqueuers NOTIFY it) only when the queue has nothing for anyone: a
                // daemon whose rows are all other daemons' stays on the poll, or every INSERT
                // would NOTIFY while it idles.
                wakeups.setQuiet(draining || (store.isShared && sawWork))
            }
            if t - lastHousekeeping >= 1 {
                lastHousekeeping = t
                if database.mayTry(at: t) { try? await refreshRouting() }
                housekeeping(now: t, group: &group)
            }
            // A retired pool stops taking work; its sends in hand finish, then it QUITs.
            for pool in retired { group.addTask { await pool.close() } }
            retired.removeAll()
            // Woken by a commit (inotify on the WAL), a finished delivery, or the next due time;
            // otherwise once a second for housekeeping and the watchdog.
            var wait = 1.0
            if let nextDue { wait = min(wait, max(0.001, nextDue - now())) }
            if let pingInterval { wait = min(wait, pingInterval) }
            await doorbell.wait(timeout: .milliseconds(Int(wait * 1000)))
        }
    }

    /// Said once when the database stops answering or taking writes (log and STATUS), then
    /// once a minute: a database away for an hour must not write 3,600 lines.
    private func databaseFailed(_ error: Error, now t: Double) {
        let fault = DatabaseFault(error)
        switch database.failed(at: t, fault: fault) {
        case .lost:
            logger.log(
                level: fault == .diskFull ? .critical : .error,
                "\(fault.headline); claiming stopped, sends in hand go on and their outcomes wait in memory; \(fault.fix)",
                metadata: ["error": "\(error)", "database": "\(store.location)"])
            notifier.status(Self.statusLine(counts: nil, inError: nil, fault: (fault, 0), unrecorded: unrecorded))
        case .stillLost:
            logger.error("\(fault.headline), still; \(fault.fix)", metadata: [
                "error": "\(error)", "down_for": "\(Self.seconds(t - (database.lostSince ?? t)))s", "unrecorded": "\(unrecorded)",
            ])
        case .quiet:
            break
        }
    }

    private func databaseAnswered(now t: Double) {
        let fault = database.fault
        if let away = database.answered(at: t) {
            logger.notice(fault == .unreachable ? "queue database reachable again" : "queue database writable again", metadata: ["down_for": "\(Self.seconds(away))s"])
        }
    }

    /// From the outcome writer: a commit of `unrecorded` outcomes failed; it tries again.
    func outcomesFailed(_ error: Error, unrecorded: Int) {
        self.unrecorded = unrecorded
        databaseFailed(error, now: now())
    }

    /// From the outcome writer: what waited is written (or, at shutdown or refused for what it
    /// holds, given up: its rows come back after their lease); claims may go on.
    func outcomesSettled(recorded: Bool) {
        unrecorded = 0
        if recorded { databaseAnswered(now: now()) }
        doorbell.ring()
    }

    /// The STATUS line: the counts, and first, while the database fails, what is wrong.
    static func statusLine(counts: QueueCounts?, inError: Int?, fault: (DatabaseFault, seconds: Int)?, unrecorded: Int) -> String {
        var parts: [String] = []
        if let (fault, seconds) = fault {
            parts.append("\(fault.headline) for \(seconds) s, delivery paused (\(fault.fix))")
            if unrecorded > 0 { parts.append("\(unrecorded) outcome(s) waiting to be recorded") }
        }
        if let counts {
            parts.append("queued \(counts.queued), deferred \(counts.deferred), sending \(counts.sending), sent last minute \(counts.sentLastMinute), configurations in error \(inError ?? 0)")
        }
        return parts.joined(separator: "; ")
    }

    /// The configurations as committed (the store re-reads them only after a change), and
    /// pools retired whose configuration's connection settings changed.
    private func refreshRouting() async throws {
        routing = try await store.currentRouting()
        health.read(routing.configs, now: now())
        retired += pools.retireStale(routing)
    }

    /// How many more messages each pool can take (`PoolRegistry.capacity`).
    private func claimPlan(now t: Double, expire: Bool) -> ClaimPlan {
        var plan = ClaimPlan(
            now: t, leaseSeconds: settings.queue.leaseSeconds, expire: expire, limit: max(0, 2000 - inFlight), room: pools.roomForClaim(),
            defaultMaxConnections: settings.delivery.defaultMaxConnections, categories: settings.categories)
        plan.lifetime = MessageLifetime(settings.delivery)
        plan.down = health.trippedVersions
        plan.giveUp = Array(givenUp)
        plan.foreign = leaving
        return plan
    }

    private func deliver(_ claimed: ClaimedMessage) async {
        defer {
            inFlight -= 1
            done(claimed)
            doorbell.ring()
        }
        let delivery = Delivery(claimed: claimed, plan: DeliveryPlan.make(claimed.message, resolution: claimed.resolution, platform: settings.platform), dispatcher: self)
        await delivery.run()
    }

    private func took(_ claimed: ClaimedMessage) {
        guard store.isShared else { return }
        inHand[claimed.id] = claimed
        if let id = claimed.resolution.config?.id { claimedFor[id, default: 0] += 1 }
    }

    private func done(_ claimed: ClaimedMessage) {
        guard store.isShared else { return }
        finishedSinceCycle = true
        inHand[claimed.id] = nil
        if let id = claimed.resolution.config?.id {
            let left = (claimedFor[id] ?? 1) - 1
            claimedFor[id] = left > 0 ? left : nil
        }
    }

    /// Work of a configuration in hand: in its pool, or claimed and on its way there.
    private func busy(_ configID: Int64) -> Bool {
        pools.load(configID: configID) > 0 || claimedFor[configID] != nil
    }

    // MARK: - What a delivery asks of the dispatcher

    var retryPolicy: RetryPolicy { RetryPolicy(settings.delivery) }

    /// Down by the delivery's own snapshot, a trip here, or the routing as last read (which
    /// may be newer than the snapshot the message was claimed with).
    func isDown(_ config: SMTPConfigRecord) -> Bool {
        if health.isDown(config) { return true }
        guard let id = config.id, let current = routing.configs[id], current.settingsVersion == config.settingsVersion else { return false }
        return ConfigHealth.isDown(current)
    }

    /// What a try of `config` needs from the dispatcher's state, read in one visit.
    struct BeforeTry: Sendable {
        var isDown: Bool
        var retry: RetryPolicy
        var tenant: TryContext.Tenant
    }

    func beforeTry(of config: SMTPConfigRecord, now t: Double) -> BeforeTry {
        BeforeTry(
            isDown: isDown(config), retry: retryPolicy,
            tenant: TryContext.Tenant(
                fallback: config.fallback, consecutiveTimeouts: health.consecutiveTimeouts(config),
                breakerTimeouts: health.breakerTimeouts, firstProbeAt: health.firstProbe(now: t)))
    }

    /// The breaker's count after a try of `config` that ended with `completion`. Returns the
    /// connect timeouts in a row before this one as they stand now, which `DeliveryPolicy`
    /// weighs: the count read before the try misses what tries running beside it saw (the
    /// chaos soak: with 3 connections a silent server tripped only at the 9th timeout, and a
    /// timeout that began before a run of successes tripped a server that had recovered).
    @discardableResult
    func noteTry(_ config: SMTPConfigRecord, _ completion: PoolCompletion) -> Int {
        let earlier = health.consecutiveTimeouts(config)
        switch completion {
        case .sent, .verified: health.reached(config)
        case .failed(let error) where error.kind == .connectTimeout: _ = health.timedOut(config)
        case .failed(let error) where error.smtpCode != nil: health.reached(config)
        default: break
        }
        return earlier
    }

    /// The keys that sign mail from `address`: none when the tenant's own server signs.
    func signingKeys(from address: String, mode: DKIMMode) -> [DKIMKey] {
        let keys = keyring.signingKeys(forSender: address, mode: mode)
        guard mode == .platform, keys.isEmpty, keyring.directoryExists, let at = address.lastIndex(of: "@") else { return keys }
        let domain = SenderAuthorization.normalizeDomain(address[address.index(after: at)...])
        if unsignedDomains.insert(domain).inserted {
            logger.notice("no DKIM key for this domain; its mail leaves unsigned", metadata: ["domain": "\(domain)", "dir": "\(keyring.directory)"])
        }
        return keys
    }

    func finish(_ claimed: ClaimedMessage, _ outcome: DeliveryOutcome) async {
        var outcome = outcome
        if outcome.status == .expired {
            // Which deadline ran out, said once for every way a message in hand expires.
            let message = claimed.message
            outcome.error = MessageLifetime(settings.delivery).reason(
                deadline: message.expiresAt ?? now(), dueAt: message.sendAt ?? message.createdAt ?? now(), lastError: outcome.error)
            outcome.errorKind = "expired"
        }
        do {
            try await writer.write(claimed, outcome: outcome)
            // Once committed: an outcome not written is tried again, and would count twice.
            metrics?.record(outcome, config: claimed.resolution.config?.label ?? "platform", createdAt: claimed.message.createdAt)
        } catch {
            // The lease runs out and the row is retried: at-least-once holds.
            logger.error("could not record a delivery", metadata: [LogKey.id: "\(claimed.id)", "error": "\(error)"])
        }
        for attempt in outcome.attempts { logAttempt(claimed.message, attempt, status: outcome.status) }
        if outcome.attempts.isEmpty { logAttempt(claimed.message, nil, status: outcome.status, reason: outcome.error) }
    }

    func release(_ claimed: ClaimedMessage) async {
        try? await store.releaseLeases([claimed])
    }

    // MARK: - Configuration status

    func markVerified(_ config: SMTPConfigRecord) async {
        guard config.status != .verified, let id = config.id else { return }
        let changed = (try? await store.recordConfigStatus(
            id: id, settingsVersion: config.settingsVersion, status: .verified, errorKind: nil, errorText: nil)) ?? false
        if changed {
            logger.notice("configuration status changed", metadata: [LogKey.config: "\(config.label)", "status": "verified", "was": "\(config.status.rawValue)"])
        }
    }

    func markError(_ config: SMTPConfigRecord, error: DeliveryError) async {
        guard let id = config.id else { return }
        // Before the write: a claim planned meanwhile already sends this configuration's mail
        // to the relay, deliveries not yet started do not try it, and what its pool holds
        // comes back to be claimed again.
        health.trip(config, now: now())
        retired += pools.retire(configID: id)
        let changed = (try? await store.recordConfigStatus(
            id: id, settingsVersion: config.settingsVersion, status: .error, errorKind: error.configErrorKind, errorText: error.text,
            firstProbeAt: health.firstProbe(now: now()))) ?? false
        if changed && (config.status != .error || config.errorKind != error.configErrorKind) {
            logger.warning("configuration status changed", metadata: [
                LogKey.config: "\(config.label)", "status": "error", "kind": "\(error.configErrorKind.rawValue)",
                "response": "\(error.text)", "fallback": "\(config.fallback.rawValue)",
            ])
        }
    }

    /// Probes of configurations that are down (child tasks: shutdown waits for them), the
    /// retention purge and the STATUS line.
    private func housekeeping(now t: Double, group: inout DiscardingTaskGroup) {
        for config in health.probesDue(routing.configs.values, now: t) {
            guard let pool = pool(for: config) else {
                health.probeFinished(config, succeeded: false)
                continue
            }
            // A probe holds its right for at most this long; a daemon that dies mid-probe
            // leaves it to another after that.
            let until = t + settings.delivery.connectTimeoutSeconds + settings.delivery.commandTimeoutSeconds
            let store = self.store
            group.addTask {
                // Several daemons see the same schedule; the one whose claim lands probes.
                guard (try? await store.claimProbe(id: config.id!, settingsVersion: config.settingsVersion, now: t, until: until)) == true else {
                    await self.probeSkipped(config)
                    return
                }
                let result = await pool.perform(.verify)
                await self.probeFinished(config, result)
            }
        }
        if store.isShared { shareTheQueue(now: t, group: &group) }
        if t - lastPurge >= 600 {
            lastPurge = t
            if settings.queue.retentionDays > 0 {
                let cutoff = t - Double(settings.queue.retentionDays) * 86400
                let store = self.store, logger = self.logger
                group.addTask {
                    if let purged = try? await store.purgeSent(before: cutoff), purged > 0 {
                        logger.info("purged sent messages past retention", metadata: ["count": "\(purged)"])
                    }
                }
            }
        }
        if t - lastStatus >= 5 {
            lastStatus = t
            let store = self.store, notifier = self.notifier
            let inError = routing.configs.values.filter { $0.status == .error }.count
            let fault = database.fault.map { ($0, seconds: Int(t - (database.lostSince ?? t))) }
            let unrecorded = self.unrecorded
            group.addTask {
                let counts = try? await store.counts(now: t)
                guard counts != nil || fault != nil else { return }
                notifier.status(Self.statusLine(counts: counts, inError: inError, fault: fault, unrecorded: unrecorded))
            }
        }
    }

    private func probeSkipped(_ config: SMTPConfigRecord) {
        health.probeFinished(config, succeeded: false)
    }

    // MARK: - A shared queue

    /// How often leases are renewed: three times per configuration lease
    /// (`PostgresStore.ownershipSeconds`, 15 s at most), so one lost renewal costs nothing.
    var renewalSeconds: Double { min(5, settings.queue.leaseSeconds / 3) }

    /// On a queue several daemons share: renew this daemon's leases, give up configurations
    /// whose pools have been idle (their connections closed first, so the cluster never holds
    /// more than a configuration's `max_connections`), and, when the database has been out of
    /// reach for most of a lease, close every pool: another daemon may take its configurations
    /// over once the lease runs out.
    private func shareTheQueue(now t: Double, group: inout DiscardingTaskGroup) {
        // The database out of reach for half a configuration lease: close every connection
        // now, with little time for sends in hand, so that none is left when another daemon
        // may take the configurations over.
        if t - lastRenewal >= PostgresStore.ownershipSeconds(lease: settings.queue.leaseSeconds) / 2 {
            let closing = pools.retireAll() + retired
            retired.removeAll()
            if !closing.isEmpty {
                logger.warning("closing every connection: this daemon's configurations may pass to another", metadata: ["pools": "\(closing.count)"])
            }
            let hard = PostgresStore.ownershipSeconds(lease: settings.queue.leaseSeconds) / 4
            for pool in closing { group.addTask { await pool.close(timeout: hard) } }
        }
        let handedOver = leaving.filter { !busy($0) }
        // Configurations held with no pool and nothing claimed (their pool was retired for a
        // trip, new settings, a reload): given up too, or renewals would keep them for ever.
        givenUp.formUnion(handedOver.filter { !pools.hasPool(configID: $0) })
        givenUp.formUnion(owned.filter { !pools.hasPool(configID: $0) && claimedFor[$0] == nil })
        let idle = pools.retireIdle(now: t, after: settings.delivery.idleTimeoutSeconds, busy: Set(claimedFor.keys))
        for (id, pool) in idle + pools.retire(configIDs: handedOver) {
            group.addTask {
                await pool.close()
                await self.connectionsClosed(configID: id)
            }
        }
        if t - lastRenewal >= renewalSeconds && !renewing {
            renewing = true
            let store = self.store
            let until = t + settings.queue.leaseSeconds
            let claims = Array(inHand.values)
            group.addTask {
                do {
                    let share = try await store.renewLeases(now: t, until: until, claims: claims)
                    await self.renewed(at: t, share: share)
                } catch {
                    await self.renewalFailed(at: t, error: error)
                }
            }
        }
    }

    private func connectionsClosed(configID: Int64) {
        // A claim meanwhile may have made a new pool for it, or taken rows for it: it stays ours.
        guard !pools.hasPool(configID: configID), claimedFor[configID] == nil else { return }
        givenUp.insert(configID)
    }

    private func renewed(at t: Double, share: ClusterShare?) {
        renewing = false
        lastRenewal = max(lastRenewal, t)
        // Hand over what is beyond this daemon's share, the least busy first, one batch per
        // renewal (what is being handed over already counts as gone).
        if let share, leaving.isEmpty, share.excess > 0 {
            let candidates = pools.configIDs.sorted { pools.load(configID: $0) + claimedFor[$0, default: 0] < pools.load(configID: $1) + claimedFor[$1, default: 0] }
            leaving = Set(candidates.prefix(share.excess))
            if !leaving.isEmpty {
                logger.info("handing configurations over to other daemons", metadata: [
                    "count": "\(leaving.count)", "daemons": "\(share.daemons)", "held": "\(share.mine)", "driven": "\(share.owned)",
                ])
            }
        }
        databaseAnswered(now: t)
    }

    private func renewalFailed(at t: Double, error: Error) {
        renewing = false
        databaseFailed(error, now: t)
    }

    private func probeFinished(_ config: SMTPConfigRecord, _ completion: PoolCompletion) async {
        switch completion {
        case .verified:
            health.probeFinished(config, succeeded: true)
            await markVerified(config)
            // At once, not at the next refresh: a delivery meanwhile would find it down in the
            // routing as last read.
            try? await refreshRouting()
        case .failed(let error):
            health.probeFinished(config, succeeded: false)
            let next = health.nextProbe(afterFailures: config.probeFailures + 1, now: now())
            try? await store.recordProbeFailure(id: config.id!, settingsVersion: config.settingsVersion, nextProbeAt: next, errorText: error.text)
            logger.info("probe failed; configuration stays down", metadata: [
                LogKey.config: "\(config.label)", "response": "\(error.text)", "next_probe_in": "\(Int(next - now()))s",
            ])
        default:
            health.probeFinished(config, succeeded: false)
        }
    }

    // MARK: - Pools

    /// The pools in service, for the metrics' connections gauges.
    func connections() -> [String: PoolConnections] { pools.connections() }

    /// A row's configuration as the metrics label it; nil is the relay's mail (or a row never
    /// routed). One added since the last refresh of the routing is not known yet.
    private func label(ofConfig id: Int64?) -> String {
        guard let id else { return "platform" }
        return routing.configs[id]?.label ?? "unknown"
    }

    func pool(for config: SMTPConfigRecord) -> (any SMTPPool)? { pools.pool(for: config, settings: settings, secrets: secrets) }

    func platformPool() -> any SMTPPool { pools.platformPool(settings: settings, password: platformPassword) }

    /// Shutdown: every pool at once, each finishing its sends in hand and QUITting (a
    /// thousand pools QUITting in turn would outlast TimeoutStopSec).
    private func closeAllPools() async {
        let all = pools.retireAll() + retired
        retired.removeAll()
        await withDiscardingTaskGroup { group in
            for pool in all { group.addTask { await pool.close() } }
        }
    }

    // MARK: - Logging

    private func logAttempt(_ message: MessageRecord, _ attempt: AttemptRecord?, status: MessageStatus, reason: String? = nil) {
        var m: Logger.Metadata = [
            LogKey.id: "\(message.id ?? 0)", LogKey.tenant: "\(message.tenant ?? "-")",
            LogKey.config: "\(attempt?.configLabel ?? "-")", LogKey.route: "\(attempt?.route?.rawValue ?? message.route?.rawValue ?? "-")",
            "to": "\(message.rcptTo)", LogKey.outcome: "\(attempt?.outcome.rawValue ?? status.rawValue)",
            "status": "\(status.rawValue)", "delay": "\(Self.seconds(now() - (message.createdAt ?? now())))",
            "attempts": "\(attempt?.attempt ?? message.attempts)",
        ]
        if let code = attempt?.smtpCode { m[LogKey.code] = "\(code)" }
        if let response = attempt?.response ?? reason { m["response"] = "\(response)" }
        if let server = attempt?.server { m[LogKey.server] = "\(server)" }
        let level: Logger.Level = (attempt?.outcome == .sent || status == .sent) ? .info : .warning
        logger.log(level: level, "delivery", metadata: m)
    }

    /// `1.23`: two decimals without Foundation's String(format:), which perf found costly.
    static func seconds(_ value: Double) -> String {
        let hundredths = Int((max(0, value) * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }

    func logSenderNotAuthorized(_ message: MessageRecord, config: SMTPConfigRecord, sender: String, refused: Bool) {
        logger.warning(
            refused ? "sender not authorized; message refused" : "sender not authorized; sent anyway",
            metadata: [
                LogKey.id: "\(message.id ?? 0)", LogKey.tenant: "\(message.tenant ?? "-")", LogKey.config: "\(config.label)",
                "from": "\(sender)",
            ])
    }

    func logSigningFailed(_ message: MessageRecord, error: Error) {
        // A key that cannot sign is the platform's problem, not the message's: it goes unsigned.
        logger.error("DKIM signing failed; sent unsigned", metadata: [LogKey.id: "\(message.id ?? 0)", "error": "\(error)"])
    }
}
