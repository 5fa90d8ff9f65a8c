import Foundation
import Logging
import PostgresNIO

extension PostgresStore {
    // MARK: - Claiming

    public func hasWork(now: Double) async throws -> Bool {
        let rows = try await query(
            """
            SELECT EXISTS (SELECT 1 FROM messages WHERE effective_priority IS NULL AND status = 'queued'
                                                    AND coalesce(send_at, created_at) <= \(now))
                OR EXISTS (SELECT 1 FROM messages WHERE status = 'queued' AND effective_priority IS NOT NULL)
                OR EXISTS (SELECT 1 FROM messages WHERE status = 'deferred' AND next_attempt_at <= \(now))
                OR EXISTS (SELECT 1 FROM messages WHERE status = 'sending' AND lease_until < \(now))
            """)
        for try await row in rows { return try row.decode(Bool.self) }
        return false
    }

    public func nextDueTime() async throws -> Double? {
        let rows = try await query(
            """
            SELECT least(
                (SELECT min(next_attempt_at) FROM messages WHERE status = 'deferred'),
                (SELECT min(coalesce(send_at, created_at)) FROM messages WHERE effective_priority IS NULL AND status = 'queued'))
            """)
        for try await row in rows { return try row.decode(Double?.self) }
        return nil
    }

    /// How deep into the line of ready rows a claim looks for rows it may take.
    static let scanWindow = 5000

    /// An admitted row's routing, written back in one statement for the whole slice.
    private struct AdmissionUpdate: Encodable {
        var id: Int64
        var p: Int
        var c: Int64?
        var r: String
        var d: Double
        var e: Double?
    }

    /// One transaction, as on SQLite (`QueueStore.claimBatch`), with every read of rows that
    /// another daemon may want made with `FOR UPDATE SKIP LOCKED`: rows it is working on are
    /// passed over, never waited for, never taken twice.
    public func claimBatch(_ plan: ClaimPlan) async throws -> ClaimBatch {
        try await transaction { db in
            let now = plan.now
            let logger = self.logger
            if plan.expire {
                // A lease that ran out: its daemon died or lost the database. The claim token
                // stays, so a late "sent" from that daemon is still recorded if nobody has
                // claimed the row again.
                try await db.query(
                    """
                    UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
                                        lease_until = NULL, lease_owner = NULL
                    WHERE id IN (SELECT id FROM messages WHERE status = 'sending' AND lease_until < \(now) FOR UPDATE SKIP LOCKED)
                    """, logger: logger)
            }
            try await db.query(
                """
                UPDATE messages SET status = 'queued'
                WHERE id IN (SELECT id FROM messages WHERE status = 'deferred' AND next_attempt_at <= \(now) FOR UPDATE SKIP LOCKED)
                """, logger: logger)
            let table = try await self.routing(db)

            func due(_ order: String, limit: Int) async throws -> [AdmissionRow] {
                let rows = try await db.query(
                    """
                    SELECT id, tenant, advertiser, cname, category, priority, send_at, expires_at, created_at FROM messages
                    WHERE effective_priority IS NULL AND status = 'queued' AND coalesce(send_at, created_at) <= \(now)
                    ORDER BY coalesce(send_at, created_at) \(unescaped: order) LIMIT \(limit) FOR UPDATE SKIP LOCKED
                    """, logger: logger)
                return try await Self.all(rows) { row in
                    var c = Cells(row)
                    let id: Int64 = try c.next()
                    let keys = RoutingKeys(tenant: try c.next(), advertiser: try c.next(), cname: try c.next(), category: try c.next())
                    return AdmissionRow(
                        id: id, keys: keys, priority: try c.next(), sendAt: try c.next(), expiresAt: try c.next(), createdAt: try c.next())
                }
            }
            var admissions = try await due("ASC", limit: QueueStore.admissionSlice).map { plan.admit($0, in: table) }
            let admittedAll = admissions.count < QueueStore.admissionSlice
            if !admittedAll {
                let oldest = Set(admissions.map(\.id))
                let head = admissions.map(\.effectivePriority).min() ?? Int.max
                admissions += try await due("DESC", limit: QueueStore.admissionNewest)
                    .filter { !oldest.contains($0.id) }
                    .map { plan.admit($0, in: table) }
                    .filter { $0.effectivePriority < head }
            }
            if !admissions.isEmpty {
                let updates = admissions.map {
                    AdmissionUpdate(id: $0.id, p: $0.effectivePriority, c: $0.configId, r: $0.route.rawValue, d: $0.dueAt, e: $0.expiresAt)
                }
                try await db.query(
                    """
                    UPDATE messages m SET effective_priority = a.p, config_id = a.c, route = a.r, next_attempt_at = a.d, expires_at = a.e
                    FROM jsonb_to_recordset(\(try Self.json(updates))::jsonb)
                         AS a(id bigint, p integer, c bigint, r text, d double precision, e double precision)
                    WHERE m.id = a.id
                    """, logger: logger)
            }
            var expired: [Int64?: Int] = [:]
            if plan.expire {
                // The reason as `MessageLifetime.reason(deadline:dueAt:lastError:)` words it.
                let lifetime = plan.lifetime.seconds, lifetimeReason = plan.lifetime.lifetimeReason
                let ownReason = MessageLifetime.ownReason
                let rows = try await db.query(
                    """
                    UPDATE messages SET status = 'expired', last_error_kind = 'expired', lease_until = NULL,
                        last_error = CASE WHEN expires_at >= coalesce(send_at, created_at) + \(lifetime) THEN \(lifetimeReason)
                                          ELSE \(ownReason) END || coalesce('; last error: ' || nullif(last_error, ''), '')
                    WHERE id IN (SELECT id FROM messages WHERE status IN ('queued', 'deferred') AND expires_at IS NOT NULL
                                                          AND expires_at <= \(now) FOR UPDATE SKIP LOCKED)
                    RETURNING config_id
                    """, logger: logger)
                for try await row in rows { expired[try row.decode(Int64?.self), default: 0] += 1 }
            }

            // Given up first, in this transaction: a row chosen below takes its configuration
            // back at once, so no claim of ours can hold rows of a configuration we no longer drive.
            if !plan.giveUp.isEmpty {
                try await db.query(
                    "DELETE FROM config_owners WHERE daemon = \(self.me) AND config_id = ANY(\(plan.giveUp.sorted()))", logger: logger)
            }
            // Configurations whose connections another daemon drives: their rows are its.
            var plan = plan
            var ours = Set<Int64>()
            let owners = try await db.query(
                "SELECT config_id, daemon = \(self.me) FROM config_owners WHERE lease_until >= \(now)", logger: logger)
            for try await row in owners {
                let (id, mine) = try row.decode((Int64, Bool).self)
                if mine { ours.insert(id) } else { plan.foreign.insert(id) }
            }

            var chooser = ClaimPlan.Chooser(plan: plan)
            var chosen: [(id: Int64, resolution: RouteResolution)] = []
            // The head of the line, other daemons' rows left out. Read at most `scanWindow` rows
            // deep: behind a backlog another daemon drives, a daemon whose own pools are idle
            // otherwise walked every row of it in every claim (20,000 rows, many times a second).
            let candidates = try await db.query(
                """
                SELECT id, tenant, advertiser, cname, category FROM (
                    SELECT id, tenant, advertiser, cname, category, config_id, effective_priority FROM messages
                    WHERE status = 'queued' AND effective_priority IS NOT NULL
                    ORDER BY effective_priority, id LIMIT \(Self.scanWindow)) head
                WHERE NOT (coalesce(config_id, 0) = ANY(\(Array(plan.foreign))))
                ORDER BY effective_priority, id LIMIT 500
                """, logger: logger)
            for try await row in candidates {
                guard !chooser.isDone else { continue }
                var c = Cells(row)
                let id: Int64 = try c.next()
                let keys = RoutingKeys(tenant: try c.next(), advertiser: try c.next(), cname: try c.next(), category: try c.next())
                let resolution = Router.resolve(keys, in: table, explain: false)
                if chooser.take(resolution) { chosen.append((id, resolution)) }
            }
            guard !chosen.isEmpty else { return ClaimBatch(messages: [], admittedAll: admittedAll, expired: expired) }

            // Take (or keep) the connections of the configurations these rows go to; a
            // configuration another daemon took meanwhile keeps its rows for that daemon.
            var wanted: [Int64] = []
            for candidate in chosen {
                if let target = plan.connectionTarget(candidate.resolution), let id = target, !wanted.contains(id) { wanted.append(id) }
            }
            // New configurations (in the order their rows came) only up to this daemon's share
            // of the cluster, so the first daemon to claim does not take them all.
            let new = wanted.filter { !ours.contains($0) }
            if !new.isEmpty {
                var daemons = 1
                for try await row in try await db.query(
                    "SELECT count(*) FROM daemons WHERE seen_at >= extract(epoch FROM clock_timestamp()) - \(Self.ownershipSeconds(lease: plan.leaseSeconds))",
                    logger: logger)
                {
                    daemons = max(1, try row.decode(Int.self))
                }
                let allowed = ClaimPlan.newConfigurations(
                    mine: ours.count, owned: ours.count + plan.foreign.count, wanting: new.count, daemons: daemons)
                let refused = Set(new.dropFirst(allowed))
                wanted.removeAll { refused.contains($0) }
                if !refused.isEmpty {
                    chosen.removeAll { candidate in
                        guard let target = plan.connectionTarget(candidate.resolution), let id = target else { return false }
                        return refused.contains(id)
                    }
                }
            }
            var mine = Set<Int64>()
            if !wanted.isEmpty {
                let held = try await db.query(
                    """
                    INSERT INTO config_owners (config_id, daemon, lease_until)
                    SELECT id, \(self.me), \(now + Self.ownershipSeconds(lease: plan.leaseSeconds))
                    FROM unnest(\(wanted.sorted())::bigint[]) AS id ORDER BY id
                    ON CONFLICT (config_id) DO UPDATE SET daemon = excluded.daemon, lease_until = excluded.lease_until
                    WHERE config_owners.daemon = excluded.daemon OR config_owners.lease_until < \(now)
                    RETURNING config_id
                    """, logger: logger)
                for try await row in held { mine.insert(try row.decode(Int64.self)) }
                if mine.count < wanted.count {
                    chosen.removeAll { candidate in
                        guard let target = plan.connectionTarget(candidate.resolution), let id = target else { return false }
                        return !mine.contains(id)
                    }
                }
            }
            guard !chosen.isEmpty else { return ClaimBatch(messages: [], admittedAll: admittedAll, expired: expired) }

            let ids = chosen.map(\.id)
            let claimed = try await db.query(
                """
                UPDATE messages SET status = 'sending', lease_until = \(now + plan.leaseSeconds), lease_owner = \(self.me),
                                    claim_token = nextval('claim_tokens'),
                                    expires_at = coalesce(expires_at, coalesce(send_at, created_at) + \(plan.lifetime.seconds))
                WHERE id IN (SELECT id FROM messages WHERE id = ANY(\(ids)) AND status = 'queued' FOR UPDATE SKIP LOCKED)
                RETURNING \(unescaped: Self.messageColumns), claim_token
                """, logger: logger)
            var messages: [Int64: (MessageRecord, Int64)] = [:]
            for try await row in claimed {
                var c = Cells(row)
                let message = try Self.message(&c)
                messages[message.id!] = (message, try c.next())
            }
            var attachments: [Int64: [AttachmentRecord]] = [:]
            if !messages.isEmpty {
                let rows = try await db.query(
                    """
                    SELECT id, message_id, filename, content_type, content FROM attachments
                    WHERE message_id = ANY(\(Array(messages.keys))) ORDER BY id
                    """, logger: logger)
                for try await row in rows {
                    let attachment = try Self.attachment(row)
                    attachments[attachment.messageId, default: []].append(attachment)
                }
            }
            return ClaimBatch(
                messages: chosen.compactMap { candidate in
                    messages[candidate.id].map { message, token in
                        ClaimedMessage(
                            message: message, attachments: attachments[candidate.id] ?? [], resolution: candidate.resolution,
                            claimToken: token)
                    }
                }, admittedAll: admittedAll, owned: Array(mine), expired: expired)
        }
    }

    private struct OutcomeRow: Encodable {
        var id: Int64
        var token: Int64?
        var status: String
        var tries: Int
        var next: Double?
        var config: Int64?
        var route: String?
        var kind: String?
        var error: String?
        var response: String?
        var mid: String?
        var sentAt: Double?
    }

    private struct AttemptRow: Encodable {
        var message_id: Int64
        var attempt: Int
        var at: Double
        var config_id: Int64?
        var config_label: String?
        var route: String?
        var server: String?
        var outcome: String
        var error_kind: String?
        var smtp_code: Int?
        var enhanced_code: String?
        var response: String?
        var refused_recipients: String?
        var duration_s: Double?
    }

    /// Every outcome and attempt of a batch in one statement. A row is written only where its
    /// claim token is still the row's: a daemon whose lease ran out cannot overwrite a row
    /// that was claimed (and perhaps sent) again meanwhile. Attempts are history and kept.
    public func finish(_ outcomes: [(claim: ClaimedMessage, outcome: DeliveryOutcome)]) async throws {
        guard !outcomes.isEmpty else { return }
        var rows: [OutcomeRow] = []
        var attempts: [AttemptRow] = []
        for (claim, o) in outcomes {
            rows.append(
                OutcomeRow(
                    id: claim.id, token: claim.claimToken, status: o.status.rawValue, tries: o.attempts.count, next: o.nextAttemptAt,
                    config: o.configId, route: o.route?.rawValue, kind: o.errorKind, error: o.error, response: o.smtpResponse,
                    mid: o.messageIdHeader, sentAt: o.sentAt))
            for a in o.attempts {
                attempts.append(
                    AttemptRow(
                        message_id: claim.id, attempt: a.attempt, at: a.at, config_id: a.configId, config_label: a.configLabel,
                        route: a.route?.rawValue, server: a.server, outcome: a.outcome.rawValue, error_kind: a.errorKind,
                        smtp_code: a.smtpCode, enhanced_code: a.enhancedCode, response: a.response,
                        refused_recipients: a.refusedRecipients, duration_s: a.durationS))
            }
        }
        try await query(
            """
            WITH locked AS (
                -- In id order, as every statement that waits for rows of ours locks them.
                SELECT id FROM messages WHERE id = ANY(\(rows.map(\.id))) ORDER BY id FOR UPDATE),
            tried AS (
                INSERT INTO attempts (message_id, attempt, at, config_id, config_label, route, server, outcome, error_kind,
                                      smtp_code, enhanced_code, response, refused_recipients, duration_s)
                SELECT a.* FROM jsonb_to_recordset(\(try Self.json(attempts))::jsonb) AS a(
                    message_id bigint, attempt integer, at double precision, config_id bigint, config_label text, route text,
                    server text, outcome text, error_kind text, smtp_code integer, enhanced_code text, response text,
                    refused_recipients text, duration_s double precision)
                WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = a.message_id))
            UPDATE messages m
            SET status = o.status, attempts = m.attempts + o.tries, next_attempt_at = o.next, lease_until = NULL, lease_owner = NULL,
                config_id = coalesce(o.config, m.config_id), route = coalesce(o.route, m.route), last_error_kind = o.kind,
                last_error = o.error, smtp_response = coalesce(o.response, m.smtp_response),
                message_id_header = coalesce(o.mid, m.message_id_header), sent_at = o."sentAt"
            FROM jsonb_to_recordset(\(try Self.json(rows))::jsonb) AS o(
                id bigint, token bigint, status text, tries integer, next double precision, config bigint, route text, kind text,
                error text, response text, mid text, "sentAt" double precision)
            WHERE m.id = o.id AND m.id IN (SELECT id FROM locked)
              AND m.claim_token IS NOT DISTINCT FROM o.token AND (m.status = 'sending' OR o.status = 'sent')
            """)
    }

    public func releaseLeases(_ claims: [ClaimedMessage]) async throws {
        guard !claims.isEmpty else { return }
        try await query(
            """
            UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END, lease_until = NULL, lease_owner = NULL
            WHERE id IN (SELECT m.id FROM messages m
                         JOIN unnest(\(claims.map(\.id)), \(claims.map { $0.claimToken ?? 0 })) AS c(id, token)
                           ON m.id = c.id AND m.claim_token = c.token
                         WHERE m.status = 'sending' ORDER BY m.id FOR UPDATE OF m)
            """)
    }

    public func renewLeases(now: Double, until: Double, claims: [ClaimedMessage]) async throws -> ClusterShare? {
        try await query(
            """
            -- Only the claims in hand, by their tokens: a row whose outcome could not be written
            -- must run out of lease and be sent again, not stay ours for as long as we live.
            -- SKIP LOCKED: a row being finished right now needs no renewal, and waiting for it
            -- while the finish waited for a row renewed here was a deadlock (seen in the bench);
            -- the same for a configuration a claim of ours is taking or giving up.
            WITH rows AS (UPDATE messages SET lease_until = \(until)
                          WHERE id IN (SELECT m.id FROM messages m
                                       JOIN unnest(\(claims.map(\.id)), \(claims.map { $0.claimToken ?? 0 })) AS c(id, token)
                                         ON m.id = c.id AND m.claim_token = c.token
                                       WHERE m.status = 'sending' FOR UPDATE OF m SKIP LOCKED)),
                 owned AS (UPDATE config_owners SET lease_until = \(now + Self.ownershipSeconds(lease: until - now))
                           WHERE config_id IN (SELECT config_id FROM config_owners WHERE daemon = \(me) FOR UPDATE SKIP LOCKED)),
                 -- Daemons that died without a word: nobody needs to wake them.
                 gone AS (DELETE FROM daemons WHERE seen_at < extract(epoch FROM clock_timestamp()) - 600)
            INSERT INTO daemons (daemon, asleep, seen_at) VALUES (\(me), false, extract(epoch FROM clock_timestamp()))
            ON CONFLICT (daemon) DO UPDATE SET seen_at = excluded.seen_at
            """)
        let rows = try await query(
            """
            SELECT (SELECT count(*) FROM daemons WHERE seen_at >= extract(epoch FROM clock_timestamp()) - \(Self.ownershipSeconds(lease: until - now))),
                   count(*), count(*) FILTER (WHERE daemon = \(me))
            FROM config_owners WHERE lease_until >= \(now)
            """)
        for try await row in rows {
            let (daemons, owned, mine) = try row.decode((Int, Int, Int).self)
            return ClusterShare(daemons: max(1, daemons), owned: owned, mine: mine)
        }
        return nil
    }

    public func releaseConnections() async throws {
        try await query("DELETE FROM config_owners WHERE daemon = \(me)")
    }

    /// Whether enqueuers should NOTIFY this daemon (`daemons.asleep`, read by the INSERT trigger).
    func setAsleep(_ asleep: Bool) async throws {
        try await query(
            """
            INSERT INTO daemons (daemon, asleep, seen_at) VALUES (\(me), \(asleep), extract(epoch FROM clock_timestamp()))
            ON CONFLICT (daemon) DO UPDATE SET asleep = excluded.asleep, seen_at = excluded.seen_at
            """)
    }

    public func wakeups(doorbell: Doorbell) throws -> any QueueWakeups {
        PostgresWakeups(store: self, configuration: listenerConfiguration, doorbell: doorbell)
    }

    public func purgeSent(before cutoff: Double, batch: Int) async throws -> Int {
        var total = 0
        while true {
            var deleted = 0
            let rows = try await query(
                """
                DELETE FROM messages WHERE id IN
                    (SELECT id FROM messages WHERE status = 'sent' AND sent_at < \(cutoff) LIMIT \(batch) FOR UPDATE SKIP LOCKED)
                RETURNING id
                """)
            for try await _ in rows { deleted += 1 }
            total += deleted
            if deleted < batch { return total }
        }
    }

    // MARK: - Operator views

    /// One round trip. The minimum of the unadmitted and waiting rows is the first entry of
    /// their partial indexes; admitted `queued` rows (all due) are the backlog waiting for room,
    /// so the cost grows with that, never with the rows kept after they finished.
    public func gauges(now: Double) async throws -> QueueGauges {
        var gauges = QueueGauges()
        let rows = try await query(
            """
            SELECT status, count(*)::bigint, NULL::double precision FROM smtp_configs GROUP BY status
            UNION ALL
            SELECT 'oldest_due', 0, least(
                (SELECT min(coalesce(send_at, created_at)) FROM messages
                 WHERE effective_priority IS NULL AND status = 'queued' AND coalesce(send_at, created_at) <= \(now)),
                (SELECT min(coalesce(next_attempt_at, send_at, created_at)) FROM messages
                 WHERE status = 'queued' AND effective_priority IS NOT NULL),
                (SELECT min(next_attempt_at) FROM messages WHERE status = 'deferred' AND next_attempt_at <= \(now)))
            """)
        for try await row in rows {
            let (name, n, at) = try row.decode((String, Int, Double?).self)
            if name == "oldest_due" {
                gauges.oldestDueAt = at
            } else if let status = ConfigStatus(rawValue: name) {
                gauges.configurations[status] = n
            }
        }
        return gauges
    }

    public func counts(now: Double) async throws -> QueueCounts {
        var counts = QueueCounts()
        let rows = try await query(
            """
            SELECT status, count(*)::bigint FROM messages GROUP BY status
            UNION ALL SELECT 'last_minute', count(*)::bigint FROM messages WHERE sent_at >= \(now - 60)
            """)
        for try await row in rows {
            let (status, n) = try row.decode((String, Int).self)
            switch status {
            case "last_minute": counts.sentLastMinute = n
            default:
                switch MessageStatus(rawValue: status) {
                case .queued: counts.queued = n
                case .sending: counts.sending = n
                case .deferred: counts.deferred = n
                case .sent: counts.sent = n
                case .failed: counts.failed = n
                case .expired: counts.expired = n
                case .cancelled: counts.cancelled = n
                case nil: break
                }
            }
        }
        return counts
    }

    /// The message trace (`MessageFilter`), newest first, as on SQLite (`QueueStore.messages`).
    /// One statement whatever is given: an unnamed statement is planned with its values, so
    /// each `$n IS NULL OR …` that does not apply folds away before the plan is chosen.
    public func messages(_ filter: MessageFilter) async throws -> [MessageRecord] {
        let status = filter.status?.rawValue, route = filter.route?.rawValue, tenant = filter.tenant
        let configTenant = filter.config?.tenant, configName = filter.config?.name, configLabel = filter.config?.description
        let domains = filter.recipientDomainForms
        let domain = domains.first, alsoDomain = domains.last
        // The config and domain conditions as SQLite words them (routing never leaves the
        // tenant; the text after an element's last @, without the closing > of `Name <a@x.com>`).
        let rows = try await query(
            """
            SELECT \(unescaped: Self.messageColumns) FROM messages
            WHERE (\(tenant)::text IS NULL OR tenant = \(tenant))
              AND (\(status)::text IS NULL OR status = \(status))
              AND (\(route)::text IS NULL OR route = \(route))
              AND (\(filter.since)::double precision IS NULL OR created_at >= \(filter.since))
              AND (\(configLabel)::text IS NULL
                   OR tenant = \(configTenant)
                      AND (config_id IN (SELECT id FROM smtp_configs WHERE tenant = \(configTenant) AND name = \(configName))
                           OR EXISTS (SELECT 1 FROM attempts WHERE attempts.message_id = messages.id
                                                               AND attempts.config_label = \(configLabel))))
              AND (\(domain)::text IS NULL
                   OR EXISTS (SELECT 1 FROM (SELECT json_array_elements_text(messages.rcpt_to::json) AS v
                                             UNION ALL SELECT json_array_elements_text(messages.cc::json)
                                             UNION ALL SELECT json_array_elements_text(messages.bcc::json)) AS recipients
                              WHERE lower(btrim(rtrim(btrim(substring(v FROM '@([^@]*)$')), '>'))) IN (\(domain), \(alsoDomain))))
            ORDER BY id DESC LIMIT \(filter.limit)
            """)
        return try await Self.all(rows, Self.message)
    }

    public func message(id: Int64) async throws -> (MessageRecord, [AttemptRecord], [AttachmentRecord])? {
        try await transaction { db in
            try await db.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", logger: self.logger)
            guard let message = try await Self.all(
                try await db.query("SELECT \(unescaped: Self.messageColumns) FROM messages WHERE id = \(id)", logger: self.logger),
                Self.message
            ).first else { return nil }
            let attempts = try await Self.all(
                try await db.query(
                    """
                    SELECT id, message_id, attempt, at, config_id, config_label, route, server, outcome, error_kind, smtp_code,
                           enhanced_code, response, refused_recipients, duration_s
                    FROM attempts WHERE message_id = \(id) ORDER BY attempt, id
                    """, logger: self.logger),
                Self.attempt)
            let attachments = try await Self.all(
                try await db.query(
                    "SELECT id, message_id, filename, content_type, content FROM attachments WHERE message_id = \(id) ORDER BY id",
                    logger: self.logger),
                Self.attachment)
            return (message, attempts, attachments)
        }
    }

    public func enqueue(_ message: MessageRecord, attachments: [(filename: String, contentType: String, content: Data)]) async throws -> Int64 {
        try await transaction { db in
            let m = message
            var id: Int64 = 0
            let rows = try await db.query(
                """
                INSERT INTO messages (tenant, advertiser, cname, category, priority, send_at, expires_at, mail_from, from_name,
                                      reply_to, rcpt_to, cc, bcc, subject, text_body, html_body, headers, idempotency_key, created_at)
                VALUES (\(m.tenant), \(m.advertiser), \(m.cname), \(m.category), \(m.priority), \(m.sendAt), \(m.expiresAt),
                        \(m.mailFrom), \(m.fromName), \(m.replyTo), \(m.rcptTo), \(m.cc), \(m.bcc), \(m.subject), \(m.textBody),
                        \(m.htmlBody), \(m.headers), \(m.idempotencyKey), \(m.createdAt ?? QueueStore.now()))
                RETURNING id
                """, logger: self.logger)
            for try await row in rows { id = try row.decode(Int64.self) }
            for a in attachments {
                try await db.query(
                    "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (\(id), \(a.filename), \(a.contentType), \(a.content))",
                    logger: self.logger)
            }
            return id
        }
    }

    public func retry(ids: [Int64]?, onlyFailed: Bool, deadline: Double) async throws -> Int {
        let now = QueueStore.now()
        let rows = try await query(
            """
            UPDATE messages
            SET status = 'queued', next_attempt_at = \(now), attempts = 0, lease_until = NULL, lease_owner = NULL,
                expires_at = CASE WHEN status = 'expired' OR expires_at <= \(now) THEN \(deadline) ELSE expires_at END
            WHERE status IN ('failed', 'expired', 'cancelled', 'deferred')
              AND (\(ids == nil)::boolean OR id = ANY(\(ids ?? [])::bigint[]))
              AND (NOT \(onlyFailed)::boolean OR status = 'failed')
            RETURNING id
            """)
        var count = 0
        for try await _ in rows { count += 1 }
        return count
    }

    public func messageID(idempotencyKey: String) async throws -> Int64? {
        let rows = try await query("SELECT id FROM messages WHERE idempotency_key = \(idempotencyKey)")
        for try await row in rows { return try row.decode(Int64.self) }
        return nil
    }

    public func cancel(id: Int64) async throws -> Bool {
        let rows = try await query(
            """
            UPDATE messages SET status = 'cancelled', lease_until = NULL, lease_owner = NULL
            WHERE id = \(id) AND status IN ('queued', 'deferred') RETURNING id
            """)
        var cancelled = false
        for try await _ in rows { cancelled = true }
        return cancelled
    }
}
