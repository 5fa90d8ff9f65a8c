import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// Issue 12 item 4, hostile rows end to end on both backends: a real `mailrouted` and a real
/// SMTP server on loopback. Each hostile row ends with a clear reason (refused at INSERT
/// naming the column, or `failed` with kind `invalid_message`) or is sent correctly; and a
/// normal message enqueued beside it is delivered within `bound` seconds (polled).
@Suite struct HostileRowTests {
    static let bound: TimeInterval = 20

    /// A daemon on `backend` with one configuration (acme/main) on `server`.
    static func start(_ backend: Backend, _ server: SMTPTestServer) throws -> DaemonProcess {
        let env = try CtlEnvironment(backend: backend, platformPort: server.port)
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        return daemon
    }

    /// Enqueues a normal message now and expects it sent within the bound; returns how long it took.
    @discardableResult
    static func normalMessageIsNotHeldUp(_ daemon: DaemonProcess, _ server: SMTPTestServer, sourceLocation: SourceLocation = #_sourceLocation) throws -> TimeInterval {
        let subject = "normal \(UUID().uuidString)"
        let start = Date()
        let id = try daemon.enqueue(subject: subject)
        let row = try daemon.waitFor(id, .sent, .failed, .deferred, timeout: bound)
        let took = Date().timeIntervalSince(start)
        #expect(row.status == .sent, "the normal message is \(row.status) after \(took) s: \(row.lastError ?? "")", sourceLocation: sourceLocation)
        #expect(server.messages().contains { $0.header("Subject") == subject }, sourceLocation: sourceLocation)
        #expect(daemon.process?.isRunning == true, "the daemon is still running", sourceLocation: sourceLocation)
        return took
    }

    /// Expects the row to end failed as invalid_message, the reason naming `column`.
    static func expectInvalid(_ daemon: DaemonProcess, _ id: Int64, naming column: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let row = try daemon.waitFor(id, .failed, .sent, .expired, timeout: bound)
        #expect(row.status == .failed, "\(column): \(row.status)", sourceLocation: sourceLocation)
        #expect(row.lastErrorKind == "invalid_message", "\(column): \(row.lastErrorKind ?? "-") \(row.lastError ?? "")", sourceLocation: sourceLocation)
        #expect(row.lastError?.contains(column) == true, "\(row.lastError ?? "") names \(column)", sourceLocation: sourceLocation)
    }

    // MARK: - Size

    /// 50 MB of text: composed, sent whole, and the normal message goes past it on another
    /// connection of the same configuration.
    @Test(arguments: [Backend.sqlite, .postgres])
    func aFiftyMegabyteBodyIsSentWholeAndHoldsNothingUp(_ backend: Backend) throws {
        var options = SMTPTestServer.Options()
        options.noSizeLimit = true
        let server = try SMTPTestServer(options)
        let daemon = try Self.start(backend, server)
        let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-the-end-\n"  // 73 octets
        let lines = 700_000  // 51.1 MB
        let big: Int64
        switch backend {
        case .sqlite:
            big = try daemon.db.write { db in
                try db.execute(
                    sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) VALUES ('acme', 'report', '[\"big@example.com\"]', 'big', ?)",
                    arguments: [String(repeating: line, count: lines) + "last line"])
                return db.lastInsertedRowID
            }
        case .postgres:
            var s = PSQL.Script()
            s.append(
                """
                INSERT INTO messages (tenant, category, rcpt_to, subject, text_body)
                VALUES ('acme', 'report', '["big@example.com"]', 'big', repeat(\(s.text(line)), \(lines)) || 'last line') RETURNING id;

                """)
            big = try daemon.psql.int64(s)
        }
        try Self.normalMessageIsNotHeldUp(daemon, server)
        let row = try daemon.waitFor(big, .sent, .failed, timeout: 180)
        #expect(row.status == .sent, "\(row.status) \(row.lastError ?? "")")
        let mail = try #require(server.messages().first { $0.header("Subject") == "big" })
        #expect(mail.data.count > lines * 73, "\(mail.data.count) octets arrived")
        let text = mail.text
        #expect(text.hasSuffix("last line\r\n"), "the body arrived to its end")
        #expect(text.components(separatedBy: "\r\n").allSatisfy { $0.utf8.count <= 998 })
    }

    /// One transaction with 1,000 RCPTs; the To header folds one address a line.
    @Test(arguments: [Backend.sqlite, .postgres])
    func aThousandRecipientsAreOneMessage(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let daemon = try Self.start(backend, server)
        let recipients = (0..<1000).map { "Recipient \($0) <r\($0)@example.com>" }
        let id = try daemon.enqueue(to: recipients, subject: "a thousand")
        try Self.normalMessageIsNotHeldUp(daemon, server)
        let row = try daemon.waitFor(id, .sent, .failed, .deferred, timeout: 60)
        #expect(row.status == .sent, "\(row.status) \(row.lastError ?? "")")
        let mail = try #require(server.messages().first { $0.header("Subject") == "a thousand" })
        #expect(mail.envelope.rcpt_tos.count == 1000)
        #expect(Set(mail.envelope.rcpt_tos) == Set((0..<1000).map { "r\($0)@example.com" }))
        #expect(Wire.problems(Array(mail.data), extras: []).isEmpty, "\(Wire.problems(Array(mail.data), extras: []))")
    }

    // MARK: - Bytes that are not text

    /// SQLite stores whatever bytes a TEXT column is given. GRDB decoded them through
    /// `String(cString:)`: a NUL cut the value short (a body sent truncated) and invalid
    /// UTF-8 became U+FFFD (sent altered). Now each such row fails, naming the column.
    @Test func invalidUTF8AndNULInSQLiteTextColumnsFailNamingTheColumn() throws {
        let server = try SMTPTestServer()
        let daemon = try Self.start(.sqlite, server)
        // Column, SQL expression for its value; the other columns valid.
        let cases: [(String, String)] = [
            ("subject", "CAST(x'48c328e9' AS TEXT)"),
            ("text_body", "CAST(x'596f757220636f6465ff3132' AS TEXT)"),
            ("html_body", "CAST(x'3c703ec0af3c2f703e' AS TEXT)"),
            ("rcpt_to", "CAST(x'5b2261ff406578616d706c652e636f6d225d' AS TEXT)"),
            ("from_name", "CAST(x'4272616e64eda080' AS TEXT)"),  // a UTF-16 surrogate, as CESU-8 writes it
            ("headers", "CAST(x'7b22582d41223a202276ff227d' AS TEXT)"),
            ("subject", "'Hi' || char(0) || 'Bcc: evil@attacker.test'"),
            ("text_body", "'Your code is' || char(0) || ' 123456'"),
            ("tenant", "'acme' || char(0) || 'evil'"),
        ]
        var failed: [(String, Int64)] = []
        var refused: [(String, String)] = []
        for (column, expression) in cases {
            var values = ["tenant": "'acme'", "category": "'report'", "rcpt_to": "'[\"to@example.com\"]'", "subject": "'Hello'", "text_body": "'Body'"]
            values[column] = expression
            let keys = values.keys.sorted()
            do {
                let id = try daemon.db.write { db in
                    try db.execute(sql: "INSERT INTO messages (\(keys.joined(separator: ", "))) VALUES (\(keys.map { values[$0]! }.joined(separator: ", ")))")
                    return db.lastInsertedRowID
                }
                failed.append((column, id))
            } catch let error as DatabaseError {
                refused.append((column, error.message ?? "\(error)"))
            }
        }
        try Self.normalMessageIsNotHeldUp(daemon, server)
        for (column, id) in failed { try Self.expectInvalid(daemon, id, naming: column) }
        for (column, message) in refused { #expect(message.contains(column), "refused at INSERT without naming \(column): \(message)") }
        #expect(failed.count + refused.count == cases.count)
        // An attachment's file name and content type: a NUL passed the filename CHECK (SQLite's
        // length() stops at it) and cut the name short.
        for (column, expression) in [("filename", "'report' || char(0) || '.exe'"), ("filename", "CAST(x'72c3287028' AS TEXT)"),
                                     ("content_type", "'text/plain' || char(0) || '; x'")] {
            let id = try daemon.db.write { db -> Int64 in
                try db.execute(sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) VALUES ('acme', 'report', '[\"to@example.com\"]', 'att', 'b')")
                let id = db.lastInsertedRowID
                let filename = column == "filename" ? expression : "'a.txt'"
                let type = column == "content_type" ? expression : "'text/plain'"
                try db.execute(sql: "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (?, \(filename), \(type), x'00ff')", arguments: [id])
                return id
            }
            try Self.expectInvalid(daemon, id, naming: column)
        }
        #expect(server.messages().count == 1, "only the normal message left: \(server.messages().map { $0.header("Subject") ?? "" })")
    }

    /// PostgreSQL refuses both at INSERT: text there is always valid UTF-8 without NUL.
    @Test func postgresRefusesInvalidUTF8AndNULAtInsert() throws {
        let server = try SMTPTestServer()
        let daemon = try Self.start(.postgres, server)
        let values = [
            "convert_from('\\x48c328e9'::bytea, 'UTF8')", "E'\\xff'", "E'Hi\\x00there'", "chr(0)", "convert_from('\\x4272616e64eda080'::bytea, 'UTF8')",
        ]
        for value in values {
            do {
                try daemon.psql.run("INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) VALUES ('acme', 'report', '[\"to@example.com\"]', \(value), 'Body');")
                Issue.record("\(value) was inserted")
            } catch let failure as PSQL.Failure {
                #expect(
                    failure.description.contains("invalid byte sequence for encoding \"UTF8\"") || failure.description.contains("null character not permitted"),
                    "\(failure.description)")
            }
        }
        #expect(try daemon.count(status: .queued) + daemon.count(status: .sent) == 0, "nothing was inserted")
        try Self.normalMessageIsNotHeldUp(daemon, server)
    }

    // MARK: - Times

    /// Swift's Double() reads "nan": `--send-at nan` was a NaN, stored by SQLite as NULL, and
    /// the message went at once.
    @Test(arguments: ["nan", "+nan", "inf", "-inf", "+inf", "NaN"])
    func mailroutectlRefusesASendAtThatIsNotANumber(_ value: String) throws {
        let env = try CtlEnvironment()
        let body = env.directory.appendingPathComponent("body.txt")
        try "Body".write(to: body, atomically: true, encoding: .utf8)
        let result = try env.ctl(
            "enqueue", "--tenant", "acme", "--category", "report", "--to", "a@example.com", "--subject", "Hi", "--text", body.path,
            "--send-at=\(value)")
        #expect(result.status == 1, "\(result.output)")
        #expect(result.stderr.contains("--send-at"), "\(result.stderr)")
    }

    /// 1e300 and infinities are refused at INSERT naming the column. NaN has no SQLite value:
    /// bound as a double it is stored as NULL (sqlite3_bind_double), which means "now", so
    /// the row is sent at once; PostgreSQL has a NaN, which its trigger refuses.
    @Test(arguments: [Backend.sqlite, .postgres])
    func sendAtOfHugeInfiniteOrNaN(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let daemon = try Self.start(backend, server)
        switch backend {
        case .sqlite:
            for (column, value) in [("send_at", 1e300), ("send_at", .infinity), ("send_at", -.infinity), ("expires_at", 1e300)] {
                do {
                    try daemon.enqueue(subject: "t", sendAt: column == "send_at" ? value : nil, expiresAt: column == "expires_at" ? value : nil)
                    Issue.record("\(column) = \(value) was inserted")
                } catch let error as DatabaseError {
                    #expect(error.message?.contains(column) == true, "\(error)")
                }
            }
            #expect(throws: DatabaseError.self, "send_at as the text 'NaN'") {
                try daemon.db.write { db in
                    try db.execute(sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body, send_at) VALUES ('acme', 'report', '[\"a@example.com\"]', 's', 'b', 'NaN')")
                }
            }
            let nan = try daemon.enqueue(subject: "nan", sendAt: .nan, expiresAt: .nan)
            let stored = try daemon.db.read { db in try Row.fetchOne(db, sql: "SELECT typeof(send_at) AS s, typeof(expires_at) AS e FROM messages WHERE id = ?", arguments: [nan])! }
            #expect(stored["s"] as String == "null" && stored["e"] as String == "null", "NaN is stored as NULL")
            let row = try daemon.waitFor(nan, .sent, .failed, timeout: Self.bound)
            #expect(row.status == .sent, "a NaN send_at is NULL: sent now (\(row.status))")
        case .postgres:
            for (column, literal) in [("send_at", "1e300"), ("send_at", "'NaN'"), ("send_at", "'Infinity'"), ("send_at", "'-Infinity'"), ("expires_at", "'NaN'")] {
                do {
                    try daemon.psql.run("INSERT INTO messages (tenant, category, rcpt_to, subject, text_body, \(column)) VALUES ('acme', 'report', '[\"a@example.com\"]', 's', 'b', \(literal)::double precision);")
                    Issue.record("\(column) = \(literal) was inserted")
                } catch let failure as PSQL.Failure {
                    #expect(failure.description.contains("\(column) must be Unix seconds"), "\(failure.description)")
                }
            }
        }
        try Self.normalMessageIsNotHeldUp(daemon, server)
    }
}
