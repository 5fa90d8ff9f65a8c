import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// The queue is a contract with other services: they INSERT with plain SQL, so these tests
/// do too, and check that every bad value is refused with a message naming the column.
@Suite struct SchemaTests {
    let store: QueueStore

    init() throws {
        store = try QueueStore(path: Paths.temporaryDirectory("schema").appendingPathComponent("q.db").path)
    }

    /// A valid row with one column replaced.
    func insert(_ overrides: [String: DatabaseValue] = [:]) throws {
        var columns: [String: DatabaseValue] = [
            "tenant": "acme".databaseValue, "category": "report".databaseValue,
            "rcpt_to": #"["a@example.com"]"#.databaseValue, "subject": "Weekly report".databaseValue,
            "text_body": "Hello".databaseValue,
        ]
        for (k, v) in overrides { columns[k] = v }
        let names = columns.keys.sorted()
        try store.pool.write { db in
            try db.execute(
                sql: "INSERT INTO messages (\(names.joined(separator: ", "))) VALUES (\(names.map { _ in "?" }.joined(separator: ", ")))",
                arguments: StatementArguments(names.map { columns[$0]! }))
        }
    }

    @Test func aValidRowGetsTheDaemonsDefaults() throws {
        try insert([
            "priority": 2.databaseValue, "cc": #"["Boss <boss@example.com>"]"#.databaseValue,
            "headers": #"{"X-Campaign": "42"}"#.databaseValue,
        ])
        let row = try store.pool.read { db in try MessageRecord.fetchOne(db)! }
        #expect(row.status == .queued)
        #expect(row.attempts == 0)
        #expect(abs((row.createdAt ?? 0) - Date().timeIntervalSince1970) < 60)
    }

    @Test(arguments: [
        (["priority": (0).databaseValue], "priority"),
        (["priority": (6).databaseValue], "priority"),
        (["priority": ("high").databaseValue], "priority"),
        (["rcpt_to": ("[]").databaseValue], "rcpt_to"),
        (["rcpt_to": ("a@example.com").databaseValue], "rcpt_to"),
        (["rcpt_to": (#"{"to": "a@example.com"}"#).databaseValue], "rcpt_to"),
        (["rcpt_to": ("[42]").databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["a@x.com\r\nBcc: evil@x.com"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": .null], "rcpt_to"),
        (["cc": ("x@example.com").databaseValue], "cc"),
        (["cc": ("[null]").databaseValue], "cc"),
        (["bcc": (#"{"a": 1}"#).databaseValue], "bcc"),
        (["subject": ("Hi\r\nBcc: evil@example.com").databaseValue], "subject"),
        (["subject": ("line\nbreak").databaseValue], "subject"),
        (["subject": .null], "subject"),
        (["text_body": .null], "text_body or html_body"),
        (["category": ("Report").databaseValue], "category"),
        (["category": ("").databaseValue], "category"),
        (["category": ("a b").databaseValue], "category"),
        (["category": (String(repeating: "a", count: 65)).databaseValue], "category"),
        (["category": .null], "category"),
        (["headers": ("[]").databaseValue], "headers"),
        (["headers": ("not json").databaseValue], "headers"),
        (["headers": (#"{"From": "ceo@example.com"}"#).databaseValue], "headers may not set From"),
        (["headers": (#"{"message-id": "<x@y>"}"#).databaseValue], "headers may not set"),
        (["headers": (#"{"bcc": "x@y.com"}"#).databaseValue], "headers may not set"),
        (["headers": (#"{"X-A": "1\r\nBcc: evil@example.com"}"#).databaseValue], "headers"),
        (["headers": (#"{"X A": "1"}"#).databaseValue], "headers"),
        (["headers": (#"{"X-A": 1}"#).databaseValue], "headers"),
        (["mail_from": ("a@x.com\r\nBcc: y@x.com").databaseValue], "mail_from"),
        (["from_name": ("Evil\nBcc: y@x.com").databaseValue], "from_name"),
        (["reply_to": ("a@x.com\rX: y").databaseValue], "reply_to"),
        (["tenant": ("").databaseValue], "tenant"),
        (["send_at": ("tomorrow").databaseValue], "send_at"),
        (["expires_at": ("never").databaseValue], "expires_at"),
        (["status": ("bogus").databaseValue], "status"),
        // The daemon's columns (issue 9): a row written as already sent would never be delivered.
        (["status": ("sent").databaseValue], "status is the daemon's"),
        (["status": ("deferred").databaseValue], "status is the daemon's"),
        (["attempts": (3).databaseValue], "attempts"),
        (["next_attempt_at": (1_900_000_000).databaseValue], "next_attempt_at"),
        (["lease_until": (1_900_000_000).databaseValue], "lease_until"),
        (["config_id": (1).databaseValue], "config_id"),
        (["route": ("default").databaseValue], "route"),
        (["last_error": ("x").databaseValue], "last_error"),
        (["smtp_response": ("250 ok").databaseValue], "smtp_response"),
        (["message_id_header": ("<a@b>").databaseValue], "message_id_header"),
        (["sent_at": (1_900_000_000).databaseValue], "sent_at"),
        (["effective_priority": (1).databaseValue], "effective_priority"),
        // Milliseconds (JavaScript's Date.now()) and other times far outside 2000-2200.
        (["send_at": (1_764_000_000_000).databaseValue], "send_at must be Unix seconds between"),
        (["send_at": (1e300).databaseValue], "send_at"),
        (["send_at": (-1).databaseValue], "send_at"),
        (["expires_at": (1_764_000_000_000.5).databaseValue], "expires_at must be Unix seconds between"),
        (["created_at": (1_764_000_000_000).databaseValue], "created_at"),
        // One address per element, caught at INSERT rather than at delivery.
        (["rcpt_to": (#"["not an address"]"#).databaseValue], "rcpt_to must hold one address per element"),
        (["rcpt_to": (#"["a@x.com, b@x.com"]"#).databaseValue], "rcpt_to must hold one address per element"),
        (["rcpt_to": (#"["a@x.com;b@x.com"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["Jane <j@x.com>, Bob <b@x.com>"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["a@b@x.com"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["@x.com"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["jane@"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["Jane <jane@x.com"]"#).databaseValue], "rcpt_to"),
        (["rcpt_to": (#"["ok@x.com", "Jane <>"]"#).databaseValue], "rcpt_to"),
        (["cc": (#"["boss"]"#).databaseValue], "cc must hold one address per element"),
        (["bcc": (#"["a@x.com b@x.com"]"#).databaseValue], "bcc must hold one address per element"),
    ] as [([String: DatabaseValue], String)])
    func checkRefusesBadRowNamingTheColumn(overrides: [String: DatabaseValue], column: String) throws {
        let error = #expect(throws: DatabaseError.self) { try insert(overrides) }
        #expect(error?.message?.contains(column) == true, "\(error?.message ?? "no message") should name \(column)")
        #expect(try store.pool.read { db in try MessageRecord.fetchCount(db) } == 0)
    }

    @Test(arguments: [
        #"["a@example.com"]"#, #"["Jane Doe <jane@example.com>"]"#, #"["\"Doe, Jane\" <jane@example.com>"]"#,
        #"["\"bob@old.example\" <bob@new.example>"]"#, #"["dev@localhost"]"#, #"["  padded@example.com  "]"#,
        #"["a@example.com", "B <b@example.com>"]"#,
    ])
    func addressesAsPeopleWriteThemPass(rcptTo: String) throws {
        try insert(["rcpt_to": rcptTo.databaseValue, "cc": rcptTo.databaseValue, "bcc": rcptTo.databaseValue])
        #expect(try store.pool.read { db in try MessageRecord.fetchCount(db) } == 1)
    }

    @Test func timesInSecondsAndAnOriginalCreationTimePass() throws {
        let now = Date().timeIntervalSince1970
        try insert(["send_at": (now + 3600.5).databaseValue, "expires_at": (now + 7200).databaseValue, "created_at": (now - 86400).databaseValue])
        #expect(try store.pool.read { db in try MessageRecord.fetchCount(db) } == 1)
    }

    /// A database made before v3 keeps every row, the ones v3 would refuse included; new rows
    /// are checked from then on.
    @Test func theContractMigrationKeepsExistingRows() throws {
        let path = Paths.temporaryDirectory("schema-v2").appendingPathComponent("q.db").path
        let old = try DatabasePool(path: path)
        try Migrations.migrator.migrate(old, upTo: "v2-claim-order")
        try old.write { db in
            try db.execute(sql: """
                INSERT INTO messages (category, rcpt_to, subject, text_body, status, sent_at, send_at)
                VALUES ('report', '["a@x.com, b@x.com"]', 'old', 'b', 'sent', 1764000000, 1764000000000)
                """)
        }
        try old.close()
        let store = try QueueStore(path: path)
        #expect(try store.appliedMigrations() == Migrations.migrator.migrations)
        let rows = try store.pool.read { db in try MessageRecord.fetchAll(db) }
        #expect(rows.map(\.subject) == ["old"])
        #expect(rows.first?.status == .sent)
        #expect(throws: DatabaseError.self) {
            try store.pool.write { db in
                try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body, status) VALUES ('report', '[\"a@x.com\"]', 'new', 'b', 'sent')")
            }
        }
    }

    /// A v2 database admitted scheduled rows at once; v5 keeps them waiting for their time.
    @Test func scheduledRowsAdmittedByAnOlderDaemonStillWait() async throws {
        let path = Paths.temporaryDirectory("schema-v4").appendingPathComponent("q.db").path
        let old = try DatabasePool(path: path)
        try Migrations.migrator.migrate(old, upTo: "v4-due-admission-routing-version")
        let later = Date().timeIntervalSince1970 + 86400
        try await old.write { db in
            try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body, send_at) VALUES ('report', '[\"a@b.test\"]', 'tomorrow', 'x', ?)", arguments: [later])
            try db.execute(sql: "UPDATE messages SET effective_priority = 4, next_attempt_at = send_at")
        }
        try old.close()
        let store = try QueueStore(path: path)
        let plan = ClaimPlan(now: Date().timeIntervalSince1970, leaseSeconds: 300, expire: true, limit: 10, room: [:], defaultMaxConnections: 4, categories: [:])
        #expect(try await store.claim(plan).isEmpty, "not before its time")
        var tomorrow = plan
        tomorrow.now = later + 1
        #expect(try await store.claim(tomorrow).map(\.message.subject) == ["tomorrow"])
    }

    @Test func duplicateIdempotencyKeyIsRefused() throws {
        try insert(["idempotency_key": "invite-42".databaseValue])
        let error = #expect(throws: DatabaseError.self) { try insert(["idempotency_key": "invite-42".databaseValue]) }
        #expect(error?.message?.contains("idempotency_key") == true)
        try insert(["idempotency_key": "invite-43".databaseValue])
        #expect(try store.pool.read { db in try MessageRecord.fetchCount(db) } == 2)
    }

    @Test func attachmentsAreCheckedAndGoWithTheirMessage() throws {
        try insert()
        try store.pool.write { db in
            try db.execute(
                sql: "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (1, 'r.pdf', 'application/pdf', x'25504446')")
            #expect(throws: DatabaseError.self) {
                try db.execute(sql: "INSERT INTO attachments (message_id, filename, content) VALUES (1, 'a\r\nb', x'00')")
            }
            #expect(throws: DatabaseError.self) {
                try db.execute(sql: "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (1, 'a', 'pdf', x'00')")
            }
            try db.execute(sql: "DELETE FROM messages")
            #expect(try Int.fetchOne(db, sql: "SELECT count(*) FROM attachments") == 0)
        }
    }

    @Test func theDatabaseIsInWALMode() throws {
        let mode = try store.pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") }
        #expect(mode == "wal")
    }

    @Test func reopeningDoesNotRerunMigrations() throws {
        let again = try QueueStore(path: store.path)
        #expect(try again.appliedMigrations() == Migrations.migrator.migrations)
        #expect(Migrations.migrator.migrations.prefix(3) == ["v1-schema", "v2-claim-order", "v3-enqueuer-contract"], "shipped names never change")
    }
}
