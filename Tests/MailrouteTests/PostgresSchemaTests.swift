import Foundation
import GRDB
import Logging
import PostgresNIO
import Testing

@testable import MailrouteCore

/// SchemaTests' enqueuer contract on PostgreSQL (SPEC §8): the same INSERTs, in plain SQL with
/// bound values as an enqueuer writes them, are refused, and where SQLite names the rule in a
/// sentence PostgreSQL prints the same sentence. Each case runs on both backends.
@Suite struct PostgresSchemaTests {
    /// A value as an enqueuer binds it; text is bound as text, as client libraries do.
    enum Value: Sendable, CustomStringConvertible {
        case text(String), int(Int), double(Double), null

        var description: String {
            switch self {
            case .text(let s): "\(s.debugDescription)"
            case .int(let i): "\(i)"
            case .double(let d): "\(d)"
            case .null: "NULL"
            }
        }

        var databaseValue: DatabaseValue {
            switch self {
            case .text(let s): s.databaseValue
            case .int(let i): i.databaseValue
            case .double(let d): d.databaseValue
            case .null: .null
            }
        }

        func bind(into bindings: inout PostgresBindings) {
            switch self {
            case .text(let s): bindings.append(s)
            case .int(let i): bindings.append(i)
            case .double(let d): bindings.append(d)
            case .null: bindings.appendNull()
            }
        }
    }

    static var logger: Logger { PostgresTestServer.logger }

    /// Runs a statement to its end and decodes one column: a trigger's error arrives with the
    /// rows, so they are read even when nobody wants them.
    static func values<Column: PostgresDecodable & Sendable>(
        _ connection: PostgresConnection, _ query: PostgresQuery, as _: Column.Type
    ) async throws -> [Column] {
        var values: [Column] = []
        for try await value in try await connection.query(query, logger: logger).decode(Column.self) {
            values.append(value)
        }
        return values
    }

    /// Runs a statement that returns no rows (or whose rows do not matter) to its end.
    static func execute(_ connection: PostgresConnection, _ query: PostgresQuery) async throws {
        for try await _ in try await connection.query(query, logger: logger) {}
    }

    /// One migrated database for the cases that roll back what they insert.
    static let database = Task<String, any Error> {
        let url = try await PostgresTestServer.freshDatabase()
        let logger = PostgresSchemaTests.logger
        _ = try await PostgresTestServer.withConnection(url) { try await PostgresSchema.migrate($0, logger: logger) }
        return url
    }

    static let validRow: [String: Value] = [
        "tenant": .text("acme"), "category": .text("report"), "rcpt_to": .text(#"["a@example.com"]"#),
        "subject": .text("Weekly report"), "text_body": .text("Hello"),
    ]

    /// Columns PostgreSQL types strictly: text bound to them is refused by type, naming the column,
    /// where SQLite (which stores anything anywhere) needs a CHECK with a sentence.
    static let numericColumns: Set<String> = [
        "priority", "send_at", "expires_at", "attempts", "next_attempt_at", "lease_until", "config_id",
        "created_at", "sent_at", "effective_priority", "claim_token",
    ]

    /// Columns only PostgreSQL has.
    static let postgresOnlyColumns: Set<String> = ["claim_token", "lease_owner"]

    static func insertStatement(_ overrides: [String: Value]) -> PostgresQuery {
        var columns = validRow
        for (k, v) in overrides { columns[k] = v }
        let names = columns.keys.sorted()
        var bindings = PostgresBindings(capacity: names.count)
        for name in names { columns[name]!.bind(into: &bindings) }
        let placeholders = (1...names.count).map { "$\($0)" }.joined(separator: ", ")
        return PostgresQuery(
            unsafeSQL: "INSERT INTO messages (\(names.joined(separator: ", "))) VALUES (\(placeholders)) RETURNING id",
            binds: bindings)
    }

    /// Runs `body` in a transaction that is rolled back, so cases share one database.
    static func inRolledBackTransaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await PostgresTestServer.withConnection(try await database.value) { connection in
            try await execute(connection, "BEGIN")
            do {
                let value = try await body(connection)
                try await execute(connection, "ROLLBACK")
                return value
            } catch {
                try? await execute(connection, "ROLLBACK")
                throw error
            }
        }
    }

    /// The server's refusal of the INSERT, or nil when it was accepted.
    static func postgresRefusal(_ overrides: [String: Value]) async throws -> PSQLError? {
        try await inRolledBackTransaction { connection in
            do {
                try await execute(connection, insertStatement(overrides))
                return nil
            } catch let error as PSQLError {
                return error
            }
        }
    }

    /// SQLite's message for the same INSERT, without its "CHECK constraint failed: " prefix.
    static func sqliteRefusal(_ overrides: [String: Value]) throws -> String? {
        let store = try QueueStore(path: Paths.temporaryDirectory("pg-schema").appendingPathComponent("q.db").path)
        var columns = validRow
        for (k, v) in overrides { columns[k] = v }
        let names = columns.keys.sorted()
        do {
            try store.pool.write { db in
                try db.execute(
                    sql: "INSERT INTO messages (\(names.joined(separator: ", "))) VALUES (\(names.map { _ in "?" }.joined(separator: ", ")))",
                    arguments: StatementArguments(names.map { columns[$0]!.databaseValue }))
            }
            return nil
        } catch let error as DatabaseError {
            let message = error.message ?? ""
            let prefix = "CHECK constraint failed: "
            return message.hasPrefix(prefix) ? String(message.dropFirst(prefix.count)) : message
        }
    }

    /// SchemaTests' refused rows (same order), then the columns only PostgreSQL has.
    static let refusedRows: [([String: Value], String)] = [
        (["priority": .int(0)], "priority"),
        (["priority": .int(6)], "priority"),
        (["priority": .text("high")], "priority"),
        (["rcpt_to": .text("[]")], "rcpt_to"),
        (["rcpt_to": .text("a@example.com")], "rcpt_to"),
        (["rcpt_to": .text(#"{"to": "a@example.com"}"#)], "rcpt_to"),
        (["rcpt_to": .text("[42]")], "rcpt_to"),
        (["rcpt_to": .text(#"["a@x.com\r\nBcc: evil@x.com"]"#)], "rcpt_to"),
        (["rcpt_to": .null], "rcpt_to"),
        (["cc": .text("x@example.com")], "cc"),
        (["cc": .text("[null]")], "cc"),
        (["bcc": .text(#"{"a": 1}"#)], "bcc"),
        (["subject": .text("Hi\r\nBcc: evil@example.com")], "subject"),
        (["subject": .text("line\nbreak")], "subject"),
        (["subject": .null], "subject"),
        (["text_body": .null], "text_body or html_body"),
        (["category": .text("Report")], "category"),
        (["category": .text("")], "category"),
        (["category": .text("a b")], "category"),
        (["category": .text(String(repeating: "a", count: 65))], "category"),
        (["category": .null], "category"),
        (["headers": .text("[]")], "headers"),
        (["headers": .text("not json")], "headers"),
        (["headers": .text(#"{"From": "ceo@example.com"}"#)], "headers may not set From"),
        (["headers": .text(#"{"message-id": "<x@y>"}"#)], "headers may not set"),
        (["headers": .text(#"{"bcc": "x@y.com"}"#)], "headers may not set"),
        (["headers": .text(#"{"X-A": "1\r\nBcc: evil@example.com"}"#)], "headers"),
        (["headers": .text(#"{"X A": "1"}"#)], "headers"),
        (["headers": .text(#"{"X-A": 1}"#)], "headers"),
        (["mail_from": .text("a@x.com\r\nBcc: y@x.com")], "mail_from"),
        (["from_name": .text("Evil\nBcc: y@x.com")], "from_name"),
        (["reply_to": .text("a@x.com\rX: y")], "reply_to"),
        (["tenant": .text("")], "tenant"),
        (["send_at": .text("tomorrow")], "send_at"),
        (["expires_at": .text("never")], "expires_at"),
        (["status": .text("bogus")], "status"),
        (["status": .text("sent")], "status is the daemon's"),
        (["status": .text("deferred")], "status is the daemon's"),
        (["attempts": .int(3)], "attempts"),
        (["next_attempt_at": .int(1_900_000_000)], "next_attempt_at"),
        (["lease_until": .int(1_900_000_000)], "lease_until"),
        (["config_id": .int(1)], "config_id"),
        (["route": .text("default")], "route"),
        (["last_error": .text("x")], "last_error"),
        (["smtp_response": .text("250 ok")], "smtp_response"),
        (["message_id_header": .text("<a@b>")], "message_id_header"),
        (["sent_at": .int(1_900_000_000)], "sent_at"),
        (["effective_priority": .int(1)], "effective_priority"),
        (["send_at": .int(1_764_000_000_000)], "send_at must be Unix seconds between"),
        (["send_at": .double(1e300)], "send_at"),
        (["send_at": .int(-1)], "send_at"),
        (["expires_at": .double(1_764_000_000_000.5)], "expires_at must be Unix seconds between"),
        (["created_at": .int(1_764_000_000_000)], "created_at"),
        (["rcpt_to": .text(#"["not an address"]"#)], "rcpt_to must hold one address per element"),
        (["rcpt_to": .text(#"["a@x.com, b@x.com"]"#)], "rcpt_to must hold one address per element"),
        (["rcpt_to": .text(#"["a@x.com;b@x.com"]"#)], "rcpt_to"),
        (["rcpt_to": .text(#"["Jane <j@x.com>, Bob <b@x.com>"]"#)], "rcpt_to"),
        (["rcpt_to": .text(#"["a@b@x.com"]"#)], "rcpt_to"),
        (["rcpt_to": .text(#"["@x.com"]"#)], "rcpt_to"),
        (["rcpt_to": .text(#"["jane@"]"#)], "rcpt_to"),
        (["rcpt_to": .text(#"["Jane <jane@x.com"]"#)], "rcpt_to"),
        (["rcpt_to": .text(#"["ok@x.com", "Jane <>"]"#)], "rcpt_to"),
        (["cc": .text(#"["boss"]"#)], "cc must hold one address per element"),
        (["bcc": .text(#"["a@x.com b@x.com"]"#)], "bcc must hold one address per element"),
        // Beyond SchemaTests: edges of the same rules.
        (["rcpt_to": .text(#"["Jane <"]"#)], "rcpt_to must hold one address per element"),
        (["rcpt_to": .text(#"[""]"#)], "rcpt_to"),
        (["headers": .text(#"{"X:A": "1"}"#)], "headers names must be printable ASCII"),
        (["headers": .text(#"{"X-A": "ok", "X-A": 1}"#)], "headers names must be printable ASCII"),
        (["created_at": .null], "created_at must be Unix seconds between"),
        (["tenant": .text(String(repeating: "t", count: 256))], "tenant"),
        // The scale-out columns are the daemon's too.
        (["claim_token": .int(1)], "claim_token is the daemon's"),
        (["lease_owner": .text("mailrouted@host-a")], "lease_owner is the daemon's"),
    ]

    @Test(arguments: PostgresSchemaTests.refusedRows)
    func refusesTheRowsSQLiteRefusesWithTheSameSentence(overrides: [String: Value], column: String) async throws {
        let error = try await Self.postgresRefusal(overrides)
        let message = error?.serverInfo?[.message]
        let sqlState = error?.serverInfo?[.sqlState]
        #expect(message?.contains(column) == true, "\(message ?? "accepted") should name \(column)")

        guard overrides.keys.allSatisfy({ !Self.postgresOnlyColumns.contains($0) }) else {
            #expect(sqlState == "23514")
            return
        }
        let sqlite = try Self.sqliteRefusal(overrides)
        #expect(sqlite != nil, "SQLite accepted what PostgreSQL refused")
        guard let sqlite else { return }
        if sqlite.hasPrefix("NOT NULL constraint failed") {
            #expect(sqlState == "23502", "\(message ?? "accepted")")  // not_null_violation, naming the column
        } else if overrides.contains(where: { Self.numericColumns.contains($0.key) && $0.value.isText }) {
            #expect(sqlState == "42804", "\(message ?? "accepted")")  // datatype_mismatch, naming the column
        } else {
            #expect(message == sqlite)
            #expect(sqlState == "23514")  // check_violation, as SQLite's constraint
        }
    }

    @Test func aValidRowGetsTheDaemonsDefaults() async throws {
        let row = try await Self.inRolledBackTransaction { connection -> [String] in
            try await Self.execute(
                connection,
                Self.insertStatement([
                    "priority": .int(2), "cc": .text(#"["Boss <boss@example.com>"]"#),
                    "headers": .text(#"{"X-Campaign": "42"}"#),
                ]))
            let rows = try await connection.query(
                "SELECT status, attempts, created_at, claim_token, lease_owner FROM messages", logger: Self.logger)
            var found: [(String, Int, Double, Int?, String?)] = []
            for try await row in rows.decode((String, Int, Double, Int?, String?).self) { found.append(row) }
            return found.map { "\($0.0) \($0.1) \(abs($0.2 - Date().timeIntervalSince1970) < 60) \($0.3 == nil) \($0.4 == nil)" }
        }
        #expect(row == ["queued 0 true true true"])
    }

    @Test(arguments: [
        #"["a@example.com"]"#, #"["Jane Doe <jane@example.com>"]"#, #"["\"Doe, Jane\" <jane@example.com>"]"#,
        #"["\"bob@old.example\" <bob@new.example>"]"#, #"["dev@localhost"]"#, #"["  padded@example.com  "]"#,
        #"["a@example.com", "B <b@example.com>"]"#,
    ])
    func addressesAsPeopleWriteThemPass(rcptTo: String) async throws {
        let error = try await Self.postgresRefusal(["rcpt_to": .text(rcptTo), "cc": .text(rcptTo), "bcc": .text(rcptTo)])
        #expect(error == nil, "\(error?.serverInfo?[.message] ?? "")")
    }

    @Test func timesInSecondsAndAnOriginalCreationTimePass() async throws {
        let now = Date().timeIntervalSince1970
        let error = try await Self.postgresRefusal([
            "send_at": .double(now + 3600.5), "expires_at": .int(Int(now) + 7200), "created_at": .double(now - 86400),
        ])
        #expect(error == nil, "\(error?.serverInfo?[.message] ?? "")")
    }

    @Test func duplicateIdempotencyKeyIsRefused() async throws {
        let message = try await Self.inRolledBackTransaction { connection -> String? in
            try await Self.execute(connection, Self.insertStatement(["idempotency_key": .text("invite-42")]))
            do {
                try await Self.execute(connection, Self.insertStatement(["idempotency_key": .text("invite-42")]))
                return nil
            } catch let error as PSQLError {
                return error.serverInfo?[.message]
            }
        }
        #expect(message?.contains("idempotency_key") == true, "\(message ?? "accepted")")
    }

    @Test func attachmentsAreCheckedAndGoWithTheirMessage() async throws {
        let (refusals, left) = try await Self.inRolledBackTransaction { connection -> ([String?], [Int]) in
            let id = try await Self.values(connection, Self.insertStatement([:]), as: Int.self)[0]
            try await Self.execute(
                connection,
                "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (\(id), 'r.pdf', 'application/pdf', '\\x25504446')")
            let bad: [PostgresQuery] = [
                "INSERT INTO attachments (message_id, filename, content) VALUES (\(id), \("a\r\nb"), '\\x00')",
                "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (\(id), 'a', 'pdf', '\\x00')",
            ]
            var refusals: [String?] = []
            for insert in bad {
                try await Self.execute(connection, "SAVEPOINT bad")
                do {
                    try await Self.execute(connection, insert)
                    refusals.append(nil)
                } catch let error as PSQLError {
                    refusals.append(error.serverInfo?[.message])
                }
                try await Self.execute(connection, "ROLLBACK TO SAVEPOINT bad")
            }
            try await Self.execute(connection, "DELETE FROM messages WHERE id = \(id)")
            let left = try await Self.values(
                connection, "SELECT count(*)::int FROM attachments WHERE message_id = \(id)", as: Int.self)
            return (refusals, left)
        }
        #expect(refusals == ["filename must be 1-255 characters without CR or LF", "content_type must look like type/subtype"])
        #expect(left == [0])
    }

    @Test func everyChangeOfRoutingBumpsTheVersionOnce() async throws {
        let versions = try await Self.inRolledBackTransaction { connection -> [Int] in
            let version: PostgresQuery = "SELECT version::int FROM routing_version"
            var versions = try await Self.values(connection, version, as: Int.self)
            try await Self.execute(
                connection,
                "INSERT INTO smtp_configs (tenant, name, host, from_address, created_at, updated_at) VALUES ('acme', 'main', 'h', 'a@acme.test', 1, 1)")
            versions += try await Self.values(connection, version, as: Int.self)
            try await Self.execute(connection, "UPDATE smtp_configs SET status = 'verified' WHERE id = -1")
            versions += try await Self.values(connection, version, as: Int.self)
            try await Self.execute(
                connection,
                "INSERT INTO routes (tenant, kind, key, config_id, created_at) SELECT 'acme', 'category', k, id, 1 FROM smtp_configs, (VALUES ('a'), ('b')) AS keys (k)")
            versions += try await Self.values(connection, version, as: Int.self)
            return versions
        }
        #expect(versions.count == 4)
        guard versions.count == 4 else { return }
        #expect(
            Array(versions.dropFirst()) == [versions[0] + 1, versions[0] + 1, versions[0] + 2],
            "an UPDATE of no row is no change; two rows in one statement are one")
    }

    @Test func migratingTwiceOrAtOnceAppliesEachMigrationOnce() async throws {
        let url = try await PostgresTestServer.freshDatabase()
        let logger = Self.logger
        async let first = PostgresTestServer.withConnection(url) { try await PostgresSchema.migrate($0, logger: logger) }
        async let second = PostgresTestServer.withConnection(url) { try await PostgresSchema.migrate($0, logger: logger) }
        let names = PostgresSchema.migrations.map(\.name)
        #expect(try await first == names)
        #expect(try await second == names)
        let again = try await PostgresTestServer.withConnection(url) { connection in
            let applied = try await PostgresSchema.migrate(connection, logger: logger)
            let rows = try await Self.values(connection, "SELECT count(*)::int FROM mailroute_migrations", as: Int.self)
            return (applied, rows)
        }
        #expect(again.0 == names)
        #expect(again.1 == [names.count])
        #expect(names.prefix(1) == ["v1-schema"], "shipped names never change")
    }

    @Test func aDatabaseWithAnUnknownMigrationIsRefused() async throws {
        let url = try await PostgresTestServer.freshDatabase()
        let logger = Self.logger
        try await PostgresTestServer.withConnection(url) { connection in
            #expect(try await PostgresSchema.applied(connection, logger: logger) == [])
            try await PostgresSchema.migrate(connection, logger: logger)
            try await Self.execute(
                connection,
                "INSERT INTO mailroute_migrations (name, applied_at) VALUES ('v99-from-the-future', extract(epoch FROM now()))")
            await #expect(
                throws: MailrouteError.schemaNewer(
                    location: "on PostgreSQL", database: "v99-from-the-future", binary: PostgresSchema.migrations.last!.name)
            ) {
                try await PostgresSchema.migrate(connection, logger: logger)
            }
            // The refusal rolled back: the connection is usable and nothing changed.
            #expect(try await PostgresSchema.applied(connection, logger: logger) == PostgresSchema.migrations.map(\.name) + ["v99-from-the-future"])
        }
    }
}

extension PostgresSchemaTests.Value {
    var isText: Bool {
        if case .text = self { return true }
        return false
    }
}
