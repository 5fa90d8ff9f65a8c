import Foundation
import GRDB

/// A row the daemon admits: what routing needs to compute its order.
public struct AdmissionRow: Sendable {
    public var id: Int64
    public var keys: RoutingKeys
    public var priority: Int?
    public var sendAt: Double?
    public var expiresAt: Double?
    public var createdAt: Double
}

/// The daemon's decision for an admitted row.
public struct Admission: Sendable {
    public var id: Int64
    public var effectivePriority: Int
    public var configId: Int64?
    public var route: RouteStep
    public var dueAt: Double
    public var expiresAt: Double?
}

/// A claimed message with everything needed to send it. A class: the record and its route
/// are ~1.5 KB, and every task and async frame that holds a message in hand (a thousand of
/// them with a thousand tenants) would carry its own copy.
public final class ClaimedMessage: Sendable {
    public let message: MessageRecord
    public let attachments: [AttachmentRecord]
    /// Where it goes, resolved in the claim transaction against the routing as committed:
    /// the dispatcher never resolves again.
    public let resolution: RouteResolution
    /// On a shared queue, what proves the claim is still this daemon's when its outcome is
    /// written (a row whose lease ran out may have been claimed and sent by another).
    public let claimToken: Int64?
    public var id: Int64 { message.id! }

    public init(message: MessageRecord, attachments: [AttachmentRecord], resolution: RouteResolution, claimToken: Int64? = nil) {
        self.message = message
        self.attachments = attachments
        self.resolution = resolution
        self.claimToken = claimToken
    }
}

/// What one claim transaction took.
public struct ClaimBatch: Sendable {
    public var messages: [ClaimedMessage]
    /// False when more due rows wait for admission than one claim admits.
    public var admittedAll: Bool
    /// Shared queue: the configurations whose connections this claim took or kept.
    public var owned: [Int64] = []
    /// Rows this claim expired (their deadline passed while they waited), by the configuration
    /// they were routed to (nil: the relay's, or not yet routed): most expiries happen here,
    /// not in a delivery, and the metrics count them (`MailrouteMetrics`).
    public var expired: [Int64?: Int] = [:]
}

/// How one try ended, to be written with its attempts rows in one transaction.
public struct DeliveryOutcome: Sendable {
    public var status: MessageStatus
    public var attempts: [AttemptRecord]
    public var nextAttemptAt: Double?
    public var configId: Int64?
    public var route: RouteStep?
    public var errorKind: String?
    public var error: String?
    public var smtpResponse: String?
    public var messageIdHeader: String?
    public var sentAt: Double?
}

public struct QueueCounts: Sendable, Equatable, Codable {
    public var queued = 0
    public var sending = 0
    public var deferred = 0
    public var sent = 0
    public var failed = 0
    public var expired = 0
    public var cancelled = 0
    public var sentLastMinute = 0
}

/// What a metrics scrape reads besides `QueueCounts`, in one cheap read.
public struct QueueGauges: Sendable, Equatable {
    /// When the message that has waited longest since it became due (a `queued` row, or a
    /// `deferred` one whose retry time has come) became due; nil when nothing is due.
    public var oldestDueAt: Double?
    /// Configurations by status (each status present, 0 when none).
    public var configurations: [ConfigStatus: Int] = Dictionary(uniqueKeysWithValues: ConfigStatus.allCases.map { ($0, 0) })

    public init(oldestDueAt: Double? = nil) {
        self.oldestDueAt = oldestDueAt
    }
}

extension QueueStore {
    // MARK: - Claiming

    /// Cheap check whether a claim cycle has anything to do.
    public func hasWork(now: Double) async throws -> Bool {
        try await pool.read { db in
            try Bool.fetchOne(
                db,
                sql: """
                    SELECT EXISTS (SELECT 1 FROM messages INDEXED BY messages_unadmitted_due
                                   WHERE effective_priority IS NULL AND status = 'queued' AND coalesce(send_at, created_at) <= ?)
                        OR EXISTS (SELECT 1 FROM messages INDEXED BY messages_ready
                                   WHERE status = 'queued' AND effective_priority IS NOT NULL)
                        OR EXISTS (SELECT 1 FROM messages INDEXED BY messages_waiting
                                   WHERE status = 'deferred' AND next_attempt_at <= ?)
                        OR EXISTS (SELECT 1 FROM messages WHERE status = 'sending' AND lease_until < ?)
                    """, arguments: [now, now, now]) ?? false
        }
    }

    /// The earliest time a waiting row becomes due, if any.
    public func nextDueTime() async throws -> Double? {
        try await pool.read { db in
            // Admitted rows wait for next_attempt_at; rows not yet admitted for their send_at.
            try Double.fetchOne(
                db,
                sql: """
                    SELECT min(t) FROM (
                        SELECT min(next_attempt_at) AS t FROM messages INDEXED BY messages_waiting WHERE status = 'deferred'
                        UNION ALL
                        SELECT min(coalesce(send_at, created_at)) FROM messages INDEXED BY messages_unadmitted_due
                        WHERE effective_priority IS NULL AND status = 'queued')
                    """)
        }
    }

    /// Rows admitted per claim transaction. Admission rewrites each row (and its body), so
    /// 2,000 at once held the writer for tens of milliseconds while the pools ran dry (in
    /// slices of 256 the drain ran 10 % faster), and an enqueuer that finds the write lock
    /// taken sleeps behind such a transaction: its INSERT's p99 during a drain, median of
    /// runs, was 17 ms with slices of 256 and 12 ms with 64 (6 and 12 runs, 9-22 ms either
    /// way: the rest of its tail is its own fsync), at the same drain rate. A backlog larger
    /// than a slice is reported (`ClaimBatch.admittedAll`) so the dispatcher goes on
    /// admitting whether or not its pools have room.
    public static let admissionSlice = 64
    /// Behind a backlog larger than a slice, each claim also reads this many of the newest
    /// due rows and admits those that outrank the oldest slice: admission goes oldest first,
    /// so a password reset INSERTed behind 20,000 due reports waited for all of them to be
    /// admitted (~1 s; 5 s behind 100,000) before its priority could count.
    public static let admissionNewest = 32

    /// `claimBatch` for callers that need only the messages.
    public func claim(_ plan: ClaimPlan) async throws -> [ClaimedMessage] {
        try await claimBatch(plan).messages
    }

    /// One short write transaction: return expired leases, expire stale rows, admit the rows
    /// that became due (a slice of them), then claim what `plan` has room for, in order, each
    /// with its route resolved against the routing as committed.
    public func claimBatch(_ plan: ClaimPlan) async throws -> ClaimBatch {
        try await pool.write { db in
            // Statements prepared once: a claim runs every few milliseconds while draining.
            // A lease that ran out means a daemon died mid-send: at-least-once, so send again.
            try db.cachedStatement(
                sql: """
                    UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END,
                                        lease_until = NULL
                    WHERE status = 'sending' AND lease_until < ?
                    """
            ).execute(arguments: [plan.now])
            let table = try self.routing(db)
            // Retries whose time has come join the line, in their place by priority and age.
            try db.cachedStatement(sql: "UPDATE messages SET status = 'queued' WHERE status = 'deferred' AND next_attempt_at <= ?")
                .execute(arguments: [plan.now])

            func due(_ order: String, limit: Int) throws -> [AdmissionRow] {
                try Row.fetchAll(
                    db.cachedStatement(
                    sql: """
                        SELECT id, tenant, advertiser, cname, category, priority, send_at, expires_at, created_at
                        FROM messages INDEXED BY messages_unadmitted_due
                        WHERE effective_priority IS NULL AND status = 'queued' AND coalesce(send_at, created_at) <= ?
                        ORDER BY coalesce(send_at, created_at) \(order) LIMIT ?
                        """), arguments: [plan.now, limit]
                ).map { row in
                    AdmissionRow(
                        id: row["id"],
                        keys: RoutingKeys(tenant: row["tenant"], advertiser: row["advertiser"], cname: row["cname"], category: row["category"]),
                        priority: row["priority"], sendAt: row["send_at"], expiresAt: row["expires_at"],
                        createdAt: row["created_at"])
                }
            }
            var admissions = try due("ASC", limit: Self.admissionSlice).map { plan.admit($0, in: table) }
            let admittedAll = admissions.count < Self.admissionSlice
            if !admittedAll {
                // Of the newest, only rows that would jump the line: the others would wait
                // behind the older ones anyway, and admitting them early would let them pass
                // older rows of their own priority that are still waiting for admission.
                let oldest = Set(admissions.map(\.id))
                let head = admissions.map(\.effectivePriority).min() ?? Int.max
                admissions += try due("DESC", limit: Self.admissionNewest)
                    .filter { !oldest.contains($0.id) }
                    .map { plan.admit($0, in: table) }
                    .filter { $0.effectivePriority < head }
            }
            if !admissions.isEmpty {
                let statement = try db.cachedStatement(
                    sql: """
                        UPDATE messages SET effective_priority = ?, config_id = ?, route = ?, next_attempt_at = ?,
                                            expires_at = ?
                        WHERE id = ?
                        """)
                for a in admissions {
                    try statement.execute(arguments: [a.effectivePriority, a.configId, a.route.rawValue, a.dueAt, a.expiresAt, a.id])
                }
            }

            var expired: [Int64?: Int] = [:]
            if plan.expire {
                // The reason as `MessageLifetime.reason(deadline:dueAt:lastError:)` words it.
                let rows = try Row.fetchCursor(
                    db,
                    sql: """
                        UPDATE messages SET status = 'expired', last_error_kind = 'expired', lease_until = NULL,
                            last_error = CASE WHEN expires_at >= coalesce(send_at, created_at) + ? THEN ? ELSE ? END
                                || coalesce('; last error: ' || nullif(last_error, ''), '')
                        WHERE status IN ('queued', 'deferred') AND expires_at IS NOT NULL AND expires_at <= ?
                        RETURNING config_id
                        """,
                    arguments: [plan.lifetime.seconds, plan.lifetime.lifetimeReason, MessageLifetime.ownReason, plan.now])
                while let row = try rows.next() { expired[row[0] as Int64?, default: 0] += 1 }
            }

            // Read in order, one row at a time, until the plan has what it can take.
            var chooser = ClaimPlan.Chooser(plan: plan)
            var chosen: [(id: Int64, resolution: RouteResolution)] = []
            let rows = try Row.fetchCursor(
                db.cachedStatement(
                    sql: """
                        SELECT id, tenant, advertiser, cname, category FROM messages INDEXED BY messages_ready
                        WHERE status = 'queued' AND effective_priority IS NOT NULL
                        ORDER BY effective_priority, id LIMIT 500
                        """))
            while !chooser.isDone, let row = try rows.next() {
                let keys = RoutingKeys(tenant: row[1], advertiser: row[2], cname: row[3], category: row[4])
                let resolution = Router.resolve(keys, in: table, explain: false)
                if chooser.take(resolution) { chosen.append((row[0], resolution)) }
            }
            guard !chosen.isEmpty else { return ClaimBatch(messages: [], admittedAll: admittedAll, expired: expired) }

            let ids = chosen.map(\.id)
            let list = ids.map(String.init).joined(separator: ",")
            // A row admitted before the lifetime bound existed gets its deadline when it is taken.
            try db.execute(
                sql: """
                    UPDATE messages SET status = 'sending', lease_until = ?,
                                        expires_at = coalesce(expires_at, coalesce(send_at, created_at) + ?)
                    WHERE id IN (\(list))
                    """,
                arguments: [plan.now + plan.leaseSeconds, plan.lifetime.seconds])
            let messages = Dictionary(
                uniqueKeysWithValues: try MessageRecord.filter(ids.contains(MessageRecord.Columns.id)).fetchAll(db).map { ($0.id!, $0) })
            let attachments = try AttachmentRecord.filter(ids.contains(AttachmentRecord.Columns.messageId))
                .order(Column("id")).fetchAll(db)
            let byMessage = Dictionary(grouping: attachments, by: \.messageId)
            return ClaimBatch(
                messages: chosen.compactMap { candidate in
                    messages[candidate.id].map {
                        ClaimedMessage(message: $0, attachments: byMessage[candidate.id] ?? [], resolution: candidate.resolution)
                    }
                }, admittedAll: admittedAll, expired: expired)
        }
    }

    /// Writes several outcomes in one transaction: one commit, however many messages. A row
    /// the operator cancelled meanwhile stays cancelled unless it was sent.
    public func finish(_ outcomes: [(claim: ClaimedMessage, outcome: DeliveryOutcome)]) async throws {
        try await pool.write { db in
            let update = try db.cachedStatement(
                sql: """
                    UPDATE messages
                    SET status = :status, attempts = attempts + :tries, next_attempt_at = :next, lease_until = NULL,
                        config_id = coalesce(:config, config_id), route = coalesce(:route, route),
                        last_error_kind = :kind, last_error = :error, smtp_response = coalesce(:response, smtp_response),
                        message_id_header = coalesce(:mid, message_id_header), sent_at = :sentAt
                    WHERE id = :id AND (status = 'sending' OR :status = 'sent')
                    """)
            let insertAttempt = try db.cachedStatement(sql: AttemptRecord.insertSQL)
            for (claim, outcome) in outcomes {
                let id = claim.id
                for var attempt in outcome.attempts {
                    attempt.messageId = id
                    try insertAttempt.execute(arguments: attempt.insertArguments)
                }
                try update.execute(arguments: [
                    "status": outcome.status.rawValue, "tries": outcome.attempts.count, "next": outcome.nextAttemptAt,
                    "config": outcome.configId, "route": outcome.route?.rawValue, "kind": outcome.errorKind,
                    "error": outcome.error, "response": outcome.smtpResponse, "mid": outcome.messageIdHeader,
                    "sentAt": outcome.sentAt, "id": id,
                ])
            }
        }
    }

    /// Gives claimed-but-unstarted rows back, as a stopping daemon must.
    public func releaseLeases(_ claims: [ClaimedMessage]) async throws {
        guard !claims.isEmpty else { return }
        let list = claims.map { String($0.id) }.joined(separator: ",")
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE messages SET status = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END, lease_until = NULL
                    WHERE status = 'sending' AND id IN (\(list))
                    """)
        }
    }

    /// One daemon per file: nobody else would take its rows while it lives.
    public func renewLeases(now: Double, until: Double, claims: [ClaimedMessage]) async throws -> ClusterShare? { nil }
    public func releaseConnections() async throws {}

    public func wakeups(doorbell: Doorbell) throws -> any QueueWakeups {
        try SQLiteWakeups(path: path, doorbell: doorbell)
    }

    /// Deletes sent messages older than the retention, a batch at a time so enqueuers never wait long.
    @discardableResult
    public func purgeSent(before cutoff: Double, batch: Int = 500) async throws -> Int {
        var total = 0
        while true {
            let deleted = try await pool.write { db -> Int in
                try db.execute(
                    sql: """
                        DELETE FROM messages WHERE id IN
                            (SELECT id FROM messages WHERE status = 'sent' AND sent_at < ? LIMIT ?)
                        """, arguments: [cutoff, batch])
                return db.changesCount
            }
            total += deleted
            if deleted < batch { return total }
        }
    }

    // MARK: - Operator views

    public func counts(now: Double) async throws -> QueueCounts {
        try await pool.read { db in try Self.counts(db, now: now) }
    }

    /// Both from partial indexes: the unadmitted and waiting rows' minimum is the first entry of
    /// theirs; admitted `queued` rows (all due) are read through `messages_ready`, so the cost
    /// grows with the backlog waiting for room, never with the rows kept after they finished.
    public func gauges(now: Double) async throws -> QueueGauges {
        try await pool.read { db in
            var gauges = QueueGauges(
                oldestDueAt: try Double.fetchOne(
                    db,
                    sql: """
                        SELECT min(t) FROM (
                            SELECT min(coalesce(send_at, created_at)) AS t FROM messages INDEXED BY messages_unadmitted_due
                            WHERE effective_priority IS NULL AND status = 'queued' AND coalesce(send_at, created_at) <= ?
                            UNION ALL
                            SELECT min(coalesce(next_attempt_at, send_at, created_at)) FROM messages INDEXED BY messages_ready
                            WHERE status = 'queued' AND effective_priority IS NOT NULL
                            UNION ALL
                            SELECT min(next_attempt_at) FROM messages INDEXED BY messages_waiting
                            WHERE status = 'deferred' AND next_attempt_at <= ?)
                        """, arguments: [now, now]))
            for row in try Row.fetchAll(db, sql: "SELECT status, count(*) FROM smtp_configs GROUP BY status") {
                if let status = ConfigStatus(rawValue: row[0]) { gauges.configurations[status] = row[1] }
            }
            return gauges
        }
    }

    static func counts(_ db: Database, now: Double) throws -> QueueCounts {
        var counts = QueueCounts()
        for row in try Row.fetchAll(db, sql: "SELECT status, count(*) AS n FROM messages GROUP BY status") {
            let n: Int = row["n"]
            switch MessageStatus(rawValue: row["status"]) {
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
        counts.sentLastMinute = try Int.fetchOne(
            db, sql: "SELECT count(*) FROM messages WHERE sent_at >= ?", arguments: [now - 60]) ?? 0
        return counts
    }

    /// The message trace (`MessageFilter`), newest first.
    public func messages(_ filter: MessageFilter) async throws -> [MessageRecord] {
        let (sql, arguments) = Self.messagesQuery(filter)
        return try await pool.read { db in try MessageRecord.fetchAll(db, sql: sql, arguments: arguments) }
    }

    /// Conditions from fixed fragments, every value bound. A configuration's mail is its
    /// tenant's, which `messages_tenant` finds before the per-row test. `SELECT *`:
    /// `MessageRecord` reads the table's columns by position while they are exactly its own,
    /// by name otherwise.
    static func messagesQuery(_ filter: MessageFilter) -> (sql: String, arguments: StatementArguments) {
        var conditions: [String] = []
        var arguments = StatementArguments()
        func when(_ condition: String, _ values: [(any DatabaseValueConvertible)?]) {
            conditions.append(condition)
            arguments += StatementArguments(values)
        }
        if let tenant = filter.tenant { when("tenant = ?", [tenant]) }
        if let status = filter.status { when("status = ?", [status.rawValue]) }
        if let route = filter.route { when("route = ?", [route.rawValue]) }
        if let since = filter.since {
            // The newest rows first, from the end of the table back to the oldest id created in
            // time (found in `messages_created` alone): the scan stops at `limit` matches or at
            // that id, never reading older rows, nor sorting a long time range.
            when("created_at >= ? AND id >= (SELECT min(id) FROM messages INDEXED BY messages_created WHERE created_at >= ?)", [since, since])
        }
        if let config = filter.config {
            // Routing never leaves the tenant, so the tenant narrows exactly. Mail sent straight
            // to the relay while the configuration was down has no attempt of it: its config_id says.
            when(
                """
                tenant = ? AND (config_id IN (SELECT id FROM smtp_configs WHERE tenant = ? AND name = ?)
                                OR EXISTS (SELECT 1 FROM attempts WHERE attempts.message_id = messages.id
                                                                    AND attempts.config_label = ?))
                """, [config.tenant, config.tenant, config.name, config.description])
        }
        let domains = filter.recipientDomainForms
        if let first = domains.first, let last = domains.last {
            // The text after an element's last @ (a display name's @ comes before the address's),
            // without the closing > of `Name <a@x.com>`: the whole domain, so x.com is not ax.com.
            when(
                """
                EXISTS (SELECT 1 FROM (SELECT value AS v FROM json_each(messages.rcpt_to)
                                       UNION ALL SELECT value FROM json_each(messages.cc)
                                       UNION ALL SELECT value FROM json_each(messages.bcc))
                        WHERE instr(v, '@') > 0
                          AND lower(trim(rtrim(trim(substr(v, length(rtrim(v, replace(v, '@', ''))) + 1)), '>'))) IN (?, ?))
                """, [first, last])
        }
        arguments += [filter.limit]
        guard !conditions.isEmpty else { return ("SELECT * FROM messages ORDER BY id DESC LIMIT ?", arguments) }
        // The ids first: where an index (a tenant's) gives the rows out of order, what is sorted
        // is ids, not whole rows with their bodies.
        let sql = """
            SELECT * FROM messages WHERE id IN (
                SELECT id FROM messages WHERE \(conditions.joined(separator: " AND ")) ORDER BY id DESC LIMIT ?)
            ORDER BY id DESC
            """
        return (sql, arguments)
    }

    public func message(id: Int64) async throws -> (MessageRecord, [AttemptRecord], [AttachmentRecord])? {
        try await pool.read { db in
            guard let message = try MessageRecord.fetchOne(db, key: id) else { return nil }
            let attempts = try AttemptRecord.filter(AttemptRecord.Columns.messageId == id)
                .order(AttemptRecord.Columns.attempt).fetchAll(db)
            let attachments = try AttachmentRecord.filter(AttachmentRecord.Columns.messageId == id).fetchAll(db)
            return (message, attempts, attachments)
        }
    }

    /// Inserts a message and its attachments in one transaction, as any enqueuer would.
    public func enqueue(_ message: MessageRecord, attachments: [(filename: String, contentType: String, content: Data)]) async throws -> Int64 {
        try await pool.write { db in
            var record = message
            // An explicit NULL would bypass the column's default.
            record.createdAt = record.createdAt ?? QueueStore.now()
            try record.insert(db)
            for a in attachments {
                var attachment = AttachmentRecord(
                    id: nil, messageId: record.id!, filename: a.filename, contentType: a.contentType, content: a.content)
                try attachment.insert(db)
            }
            return record.id!
        }
    }

    public func messageID(idempotencyKey: String) async throws -> Int64? {
        try await pool.read { db in
            try MessageRecord.filter(MessageRecord.Columns.idempotencyKey == idempotencyKey).select(MessageRecord.Columns.id, as: Int64.self).fetchOne(db)
        }
    }

    public func retry(ids: [Int64]?, onlyFailed: Bool, deadline: Double) async throws -> Int {
        try await pool.write { db in
            var sql = """
                UPDATE messages
                SET status = 'queued', next_attempt_at = :now, attempts = 0, lease_until = NULL,
                    expires_at = CASE WHEN status = 'expired' OR expires_at <= :now THEN :deadline ELSE expires_at END
                WHERE status IN ('failed', 'expired', 'cancelled', 'deferred')
                """
            if let ids { sql += " AND id IN (\(ids.map(String.init).joined(separator: ",")))" }
            if onlyFailed { sql += " AND status = 'failed'" }
            try db.execute(sql: sql, arguments: ["now": QueueStore.now(), "deadline": deadline])
            return db.changesCount
        }
    }

    /// Cancels a row that has not been sent. A row being sent right now is not stopped: its result wins.
    public func cancel(id: Int64) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE messages SET status = 'cancelled', lease_until = NULL WHERE id = ? AND status IN ('queued', 'deferred')",
                arguments: [id])
            return db.changesCount > 0
        }
    }
}
