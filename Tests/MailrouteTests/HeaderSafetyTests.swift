import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// CR/LF in every field an enqueuer controls: refused by the schema at INSERT, or failed by
/// the daemon with `invalid_message`; never an extra header on the wire.
@Suite struct HeaderSafetyTests {
    static let payloads = ["\r\nX-Injected: crlf", "\nX-Injected: lf", "\rX-Injected: cr"]

    /// One column of a row (or of its attachment) set to `value`, the rest valid.
    struct Case: CustomStringConvertible {
        var field: String
        var apply: (inout [String: DatabaseValueConvertible?], inout [String: DatabaseValueConvertible?], String) -> Void
        var description: String { field }
    }

    static var cases: [Case] { [
        Case(field: "subject") { m, _, v in m["subject"] = "Hi" + v },
        Case(field: "from_name") { m, _, v in m["from_name"] = "Brand" + v },
        Case(field: "mail_from") { m, _, v in m["mail_from"] = "main@acme.test" + v },
        Case(field: "reply_to") { m, _, v in m["reply_to"] = "r@acme.test" + v },
        Case(field: "rcpt_to") { m, _, v in m["rcpt_to"] = jsonArray(["to@example.com" + v]) },
        Case(field: "cc") { m, _, v in m["cc"] = jsonArray(["Name" + v + " <cc@example.com>"]) },
        Case(field: "bcc") { m, _, v in m["bcc"] = jsonArray(["bcc@example.com" + v]) },
        Case(field: "headers value") { m, _, v in m["headers"] = json(["X-Campaign": "w47" + v]) },
        Case(field: "headers name") { m, _, v in m["headers"] = json(["X-Campaign" + v: "w47"]) },
        Case(field: "attachment filename") { _, a, v in a["filename"] = "report" + v + ".pdf" },
        Case(field: "attachment content_type") { _, a, v in a["content_type"] = "application/pdf" + v },
    ] }

    static func json(_ object: [String: String]) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    /// Inserts a message and its attachment; false when the schema refused them.
    static func insert(_ db: Database, message: [String: DatabaseValueConvertible?], attachment: [String: DatabaseValueConvertible?]) throws -> Bool {
        do {
            try db.inSavepoint {
                let m = message.sorted { $0.key < $1.key }
                try db.execute(
                    sql: "INSERT INTO messages (\(m.map(\.key).joined(separator: ", "))) VALUES (\(m.map { _ in "?" }.joined(separator: ", ")))",
                    arguments: StatementArguments(m.map(\.value)))
                let id = db.lastInsertedRowID
                let a = attachment.sorted { $0.key < $1.key }
                try db.execute(
                    sql: "INSERT INTO attachments (message_id, \(a.map(\.key).joined(separator: ", "))) VALUES (?, \(a.map { _ in "?" }.joined(separator: ", ")))",
                    arguments: StatementArguments([id] + a.map(\.value)))
                return .commit
            }
            return true
        } catch is DatabaseError {
            return false
        }
    }

    static var baseMessage: [String: DatabaseValueConvertible?] { [
        "tenant": "acme", "category": "report", "rcpt_to": #"["to@example.com"]"#, "subject": "Hi", "text_body": "Body",
    ] }
    static var baseAttachment: [String: DatabaseValueConvertible?] { [
        "filename": "report.pdf", "content_type": "application/pdf", "content": Data("%PDF".utf8),
    ] }

    @Test func noFieldCarriesAHeaderOntoTheWire() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment()
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let daemon = DaemonProcess(env: env)

        var accepted: [(String, Int64)] = []
        var refused = 0
        try daemon.db.write { db in
            for c in Self.cases {
                for payload in Self.payloads {
                    var m = Self.baseMessage, a = Self.baseAttachment
                    c.apply(&m, &a, payload)
                    let messageCount = try Int.fetchOne(db, sql: "SELECT count(*) FROM messages")!
                    if try Self.insert(db, message: m, attachment: a) {
                        let id = try Int64.fetchOne(db, sql: "SELECT max(id) FROM messages")!
                        accepted.append(("\(c) \(payload.debugDescription)", id))
                    } else {
                        refused += 1
                        #expect(try Int.fetchOne(db, sql: "SELECT count(*) FROM messages")! == messageCount)
                    }
                }
            }
        }
        // Past the INSERT triggers: an UPDATE is what a careless service could still do.
        let updated: [(String, String)] = [
            ("rcpt_to", jsonArray(["to@example.com\r\nX-Injected: upd"])),
            ("cc", jsonArray(["cc@example.com\nX-Injected: upd"])),
            ("headers", Self.json(["X-A": "v\r\nX-Injected: upd"])),
            ("headers", Self.json(["X-A\r\nX-Injected": "upd"])),
            ("headers", Self.json(["Bcc": "hidden@example.com"])),
            ("subject", "vertical\u{0B}tab"),
            ("subject", "line\u{2028}separator"),
        ]
        for (column, value) in updated {
            let id = try daemon.enqueue(subject: "to be updated")
            try daemon.db.write { db in try db.execute(sql: "UPDATE messages SET \(column) = ? WHERE id = ?", arguments: [value, id]) }
            accepted.append(("UPDATE \(column) = \(value.debugDescription)", id))
        }
        let control = try daemon.enqueue(subject: "control", headers: Self.json(["X-Campaign": "w47"]))

        try daemon.start()
        #expect(try daemon.waitFor(control, .sent).status == .sent)
        for (what, id) in accepted {
            let row = try daemon.waitFor(id, .failed, .sent)
            #expect(row.status == .failed, "\(what) was \(row.status)")
            #expect(row.lastErrorKind == "invalid_message", "\(what): \(row.lastErrorKind ?? "-") \(row.lastError ?? "")")
        }
        #expect(refused > 0)

        let mails = server.messages()
        #expect(mails.count == 1, "only the control message left")
        for mail in mails {
            let head = mail.text.components(separatedBy: "\r\n\r\n")[0]
            #expect(!head.contains("X-Injected"))
            #expect(mail.header("X-Campaign") == "w47")
        }
    }

    @Test func theCLIRefusesLineBreaksNamingTheOption() async throws {
        let env = try CtlEnvironment()
        let body = env.directory.appendingPathComponent("body.txt")
        try "Body".write(to: body, atomically: true, encoding: .utf8)
        let result = try env.ctl(
            "enqueue", "--tenant", "acme", "--category", "report", "--to", "a@example.com", "--subject", "Hi\r\nBcc: x@evil.example",
            "--text", body.path)
        #expect(result.status == 1)
        #expect(result.stderr.contains("subject"), "\(result.stderr)")
        let recipient = try env.ctl(
            "enqueue", "--tenant", "acme", "--category", "report", "--to", "a@example.com\nBcc: x@evil.example", "--subject", "Hi",
            "--text", body.path)
        #expect(recipient.status == 1)
        #expect(try await env.store().counts(now: QueueStore.now()).queued == 0, "nothing was queued")
    }
}
