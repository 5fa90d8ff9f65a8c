import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// The claim transaction on a real SQLite file, without a daemon.
@Suite struct ClaimTests {
    let store: QueueStore

    init() throws {
        store = try QueueStore(path: Paths.temporaryDirectory("claim").appendingPathComponent("q.db").path)
    }

    func plan(now: Double, limit: Int = 100) -> ClaimPlan {
        ClaimPlan(
            now: now, leaseSeconds: 300, expire: true, limit: limit, room: [:], defaultMaxConnections: 50,
            categories: MailrouteConfiguration().categories)
    }

    /// Due mail never waits behind a scheduled backlog: admission looks only at due rows.
    @Test func dueMailIsClaimedAtOnceBehindAScheduledBacklog() async throws {
        let now = Date().timeIntervalSince1970
        try await store.pool.write { db in
            let insert = try db.makeStatement(
                sql: "INSERT INTO messages (category, rcpt_to, subject, text_body, send_at) VALUES ('report', '[\"a@b.test\"]', 'later', 'x', ?)")
            for i in 0..<100_000 { try insert.execute(arguments: [now + 10 * 365 * 86400 + Double(i)]) }
        }
        let reports = try await store.pool.write { db -> [Int64] in
            try (0..<5).map { _ in
                try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('report', '[\"a@b.test\"]', 'due', 'x')")
                return db.lastInsertedRowID
            }
        }
        let reset = try await store.pool.write { db -> Int64 in
            try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('password_reset', '[\"a@b.test\"]', 'reset', 'x')")
            return db.lastInsertedRowID
        }
        let claimed = try await store.claim(plan(now: Date().timeIntervalSince1970 + 1))
        #expect(claimed.map(\.id) == [reset] + reports, "the reset first (priority 1), then the reports in order")
        let untouched = try await store.pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE effective_priority IS NULL AND subject = 'later'")
        }
        #expect(untouched == 100_000, "scheduled rows are not admitted before their time")
        let next = try await store.nextDueTime()
        #expect(next != nil && next! > now + 10 * 365 * 86400 - 1)
    }

    /// Each claimed row carries its route, resolved in the same transaction as the claim.
    /// Admission goes a slice per transaction and says when rows are left, so the dispatcher
    /// goes on admitting even while no pool has room (limit 0 here). Of the newest rows behind
    /// the backlog only those that outrank it are admitted early: a reset INSERTed after
    /// hundreds of due reports counts as a reset in the first claim, and a report INSERTed
    /// after it does not pass the reports still waiting for admission.
    @Test func admissionGoesASliceAtATimeAndARowThatOutranksTheBacklogFirst() async throws {
        let slice = QueueStore.admissionSlice
        let total = slice * 3 + 10
        let (reset, lastReport) = try await store.pool.write { db -> (Int64, Int64) in
            let report = "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('report', '[\"a@b.test\"]', 'due', 'x')"
            for _ in 0..<total { try db.execute(sql: report) }
            try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('password_reset', '[\"a@b.test\"]', 'reset', 'x')")
            let reset = db.lastInsertedRowID
            try db.execute(sql: report)
            return (reset, db.lastInsertedRowID)
        }
        func count(_ condition: String) async throws -> Int {
            try await store.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE \(condition)") ?? -1 }
        }
        let later = Date().timeIntervalSince1970 + 1
        var rounds: [Bool] = []
        var counts: [Int] = []
        for round in 0..<4 {
            let batch = try await store.claimBatch(plan(now: later, limit: 0))
            #expect(batch.messages.isEmpty)
            rounds.append(batch.admittedAll)
            counts.append(try await count("effective_priority IS NOT NULL"))
            if round == 0 {
                #expect(try await count("id = \(reset) AND effective_priority IS NOT NULL") == 1, "the reset jumps the line")
                #expect(try await count("id = \(lastReport) AND effective_priority IS NULL") == 1, "the last report waits its turn")
            }
        }
        #expect(rounds == [false, false, false, true])
        #expect(counts == [slice + 1, 2 * slice + 1, 3 * slice + 1, total + 2])
        let first = try await store.claim(plan(now: later, limit: 1))
        #expect(first.map(\.id) == [reset], "the reset, admitted in the first claim, goes first")
        let unadmitted = try await store.pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE effective_priority IS NULL")
        }
        #expect(unadmitted == 0)
    }

    @Test func theClaimResolvesAgainstTheRoutingAsCommitted() async throws {
        let now = Date().timeIntervalSince1970
        let id = try await store.pool.write { db -> Int64 in
            try db.execute(sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) VALUES ('acme', 'report', '[\"a@b.test\"]', 's', 'x')")
            return db.lastInsertedRowID
        }
        // Admitted while acme has no configuration: the relay.
        #expect(try await store.claim(plan(now: now, limit: 0)).isEmpty)
        let config = try store.insertConfig(SMTPConfigRecord(tenant: "acme", name: "main", host: "h.test", fromAddress: "a@acme.test"))
        let claimed = try await store.claim(plan(now: Date().timeIntervalSince1970 + 1))
        #expect(claimed.map(\.id) == [id])
        #expect(claimed.first?.resolution.step == .default)
        #expect(claimed.first?.resolution.config?.id == config.id)
    }

    /// Retries join the line when their time comes, in priority order; until then they are
    /// not in the claim's way, however many.
    @Test func retriesWaitApartAndJoinTheLineWhenDue() async throws {
        let now = Date().timeIntervalSince1970
        try await store.pool.write { db in
            let insert = try db.makeStatement(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('report', '[\"a@b.test\"]', 'retry', 'x')")
            for _ in 0..<20_000 { try insert.execute() }
            // As the daemon leaves rows after a 4xx: deferred for an hour, one of them due now.
            try db.execute(sql: "UPDATE messages SET status = 'deferred', attempts = 1, effective_priority = 4, next_attempt_at = ?", arguments: [now + 3600])
            try db.execute(sql: "UPDATE messages SET next_attempt_at = ? WHERE id = 7", arguments: [now - 1])
        }
        let fresh = try await store.pool.write { db -> Int64 in
            try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('invite', '[\"a@b.test\"]', 'new', 'x')")
            return db.lastInsertedRowID
        }
        let claimed = try await store.claim(plan(now: Date().timeIntervalSince1970 + 1))
        #expect(claimed.map(\.id) == [fresh, 7], "the invite (priority 2) first, then the due retry (4)")
        let waiting = try await store.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM messages WHERE status = 'deferred'") }
        #expect(waiting == 19_999)
    }

    /// The claim reads only its partial indexes: finished rows and rows waiting for later are
    /// not in them, so they cannot slow it.
    @Test func theClaimQueriesUseTheirPartialIndexes() async throws {
        let plans = try await store.pool.read { db in
            try [
                "SELECT id FROM messages INDEXED BY messages_ready WHERE status = 'queued' AND effective_priority IS NOT NULL ORDER BY effective_priority, id LIMIT 500",
                "UPDATE messages SET status = 'queued' WHERE status = 'deferred' AND next_attempt_at <= 0",
                "UPDATE messages SET status = 'expired' WHERE status IN ('queued', 'deferred') AND expires_at IS NOT NULL AND expires_at <= 0",
            ].map { sql in try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql).map { $0["detail"] as String }.joined(separator: "; ") }
        }
        #expect(plans[0].contains("messages_ready") && !plans[0].contains("TEMP B-TREE"), "\(plans[0])")
        #expect(plans[1].contains("messages_waiting"), "\(plans[1])")
        #expect(plans[2].contains("messages_expiry"), "\(plans[2])")
    }
}
