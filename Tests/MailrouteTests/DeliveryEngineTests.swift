import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// The delivery engine end to end: routing, order, isolation, reuse, composition, time.
/// Every case runs on both queue backends: SQLite, and PostgreSQL (SPEC §8) with its enqueuer
/// as `psql` (`DaemonProcess`).
@Suite struct DeliveryEngineTests {
    @Test(arguments: [Backend.sqlite, .postgres]) func everyRoutingStepEndToEnd(_ backend: Backend) throws {
        let relay = try SMTPTestServer()
        let main = try SMTPTestServer(), brand = try SMTPTestServer(), wl = try SMTPTestServer(), reports = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend, platformPort: relay.port)
        try env.addConfig(name: "main", port: main.port)
        try env.addConfig(name: "brand", port: brand.port)
        try env.addConfig(name: "wl", port: wl.port)
        try env.addConfig(name: "reports", port: reports.port)
        try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "brand")
        try env.ctl("route", "set", "--tenant", "acme", "--cname", "mail.wl.test", "--config", "wl")
        try env.ctl("route", "set", "--tenant", "acme", "--category", "report", "--config", "reports")
        let daemon = DaemonProcess(env: env)
        try daemon.start()

        let cases: [(Int64, RouteStep, SMTPTestServer)] = [
            (try daemon.enqueue(subject: "adv", advertiser: "adv-1", cname: "mail.wl.test"), .advertiser, brand),
            (try daemon.enqueue(subject: "cname", cname: "MAIL.WL.TEST"), .cname, wl),
            (try daemon.enqueue(subject: "category", category: "report"), .category, reports),
            (try daemon.enqueue(subject: "default", category: "invite"), .default, main),
            (try daemon.enqueue(tenant: nil, subject: "platform"), .platform, relay),
            (try daemon.enqueue(tenant: "nobody", subject: "no config"), .platform, relay),
        ]
        for (id, step, server) in cases {
            let row = try daemon.waitFor(id, .sent)
            #expect(row.status == .sent)
            #expect(row.route == step)
            #expect(server.messages().contains { $0.header("Subject") == row.subject }, "\(row.subject) via \(step)")
        }
        #expect(try #require(brand.messages().first).envelope.mail_from == "brand@acme.test")
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func aPriorityOneMessageOvertakesABacklog(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        // One connection at 10 messages a second: the backlog lasts half a minute.
        try env.addConfig(name: "main", port: server.port, extra: ["--max-connections", "1", "--rate-per-minute", "600"])
        let daemon = DaemonProcess(env: env)
        try daemon.enqueueMany(300, subject: "newsletter", priority: 5, category: "newsletter")
        try daemon.start()
        #expect(waitUntil(timeout: 20) { server.messages().count >= 5 })
        let receivedBefore = server.messages().count
        let reset = try daemon.enqueue(subject: "password reset", category: "password_reset")
        try daemon.waitFor(reset, .sent, timeout: 30)
        let subjects = server.messages().map { $0.header("Subject") ?? "" }
        let position = try #require(subjects.firstIndex(of: "password reset"))
        // Ahead of it only what the one connection already had in hand or waiting.
        #expect(position - receivedBefore <= 3, "\(position - receivedBefore) newsletters went first")
        #expect(try daemon.count(status: .queued) > 200, "the backlog was still there")
        #expect(try daemon.row(reset).effectivePriority == 1)
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func aSilentServerDoesNotDelayAHealthyOne(_ backend: Backend) throws {
        let silent = try SMTPTestServer.fault("--silent")
        let healthy = try SMTPTestServer()
        let relay = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend, platformPort: relay.port, delivery: ["connect_timeout_s = 8", "command_timeout_s = 8"])
        try env.addConfig(tenant: "quiet", name: "main", port: silent.port, extra: ["--fallback", "none"])
        try env.addConfig(tenant: "busy", name: "main", port: healthy.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        for i in 0..<20 { try daemon.enqueue(tenant: "quiet", subject: "stuck \(i)") }
        var healthyIDs: [Int64] = []
        for i in 0..<20 { healthyIDs.append(try daemon.enqueue(tenant: "busy", subject: "fine \(i)")) }
        let start = Date()
        #expect(waitUntil(timeout: 20) { healthy.messages().count == 20 })
        // Well inside the silent server's 8 s connect timeout: nothing waited for it.
        #expect(Date().timeIntervalSince(start) < 6, "healthy mail took \(Date().timeIntervalSince(start)) s")
        for id in healthyIDs { #expect(try daemon.row(id).status == .sent) }
        #expect(silent.events().contains("connect"))
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func connectionsAreReusedAcrossMessages(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: server.port, extra: ["--max-connections", "2"])
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        try daemon.enqueueMany(50, subject: "reuse")
        #expect(waitUntil(timeout: 30) { server.messages().count == 50 })
        let connects = server.events().filter { $0 == "connect" }.count
        #expect(connects >= 1 && connects <= 2, "\(connects) connections for 50 messages")
        #expect(daemon.stop() == 0)
        #expect(waitUntil { server.events().filter { $0 == "quit" }.count == connects }, "pooled connections QUIT on stop")
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func mimeIsReadBackByARealParser(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: server.port, extra: ["--from-name", "Zoë's Büro, Inc."])
        let daemon = DaemonProcess(env: env)
        let attachment = Data((0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let longLine = String(repeating: "é", count: 3000)
        let textBody = "Bonjour Jane,\n.leading dot\n" + longLine
        let id: Int64
        switch backend {
        case .sqlite:
            id = try daemon.db.write { db -> Int64 in
                try db.execute(
                    sql: """
                        INSERT INTO messages (tenant, category, rcpt_to, cc, subject, text_body, html_body, headers)
                        VALUES ('acme', 'report', '["Jane Doe <jane@example.com>"]', '["\\"Boss, The\\" <boss@example.com>"]',
                                'Rapport hebdomadaire — ça marche ✓', ?, '<p>Bonjour <b>Jane</b></p>', '{"X-Campaign": "week-47"}')
                        """, arguments: [textBody])
                let mid = db.lastInsertedRowID
                try db.execute(
                    sql: "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (?, 'données.bin', 'application/octet-stream', ?)",
                    arguments: [mid, attachment])
                return mid
            }
        case .postgres:
            // The same two INSERTs in one transaction, as a service on PostgreSQL writes them.
            var s = PSQL.Script("BEGIN;\n")
            s.append(
                """
                INSERT INTO messages (tenant, category, rcpt_to, cc, subject, text_body, html_body, headers)
                VALUES ('acme', 'report', '["Jane Doe <jane@example.com>"]', '["\\"Boss, The\\" <boss@example.com>"]',
                        'Rapport hebdomadaire — ça marche ✓', \(s.text(textBody)), '<p>Bonjour <b>Jane</b></p>', '{"X-Campaign": "week-47"}')
                RETURNING id AS mid \\gset
                INSERT INTO attachments (message_id, filename, content_type, content)
                VALUES (:mid, 'données.bin', 'application/octet-stream', \(s.bytes(attachment)));
                COMMIT;
                SELECT :mid;

                """)
            id = try daemon.psql.int64(s)
        }
        try daemon.start()
        try daemon.waitFor(id, .sent)
        let mail = try #require(server.messages().first)
        #expect(mail.text.components(separatedBy: "\r\n").allSatisfy { $0.utf8.count < 998 })
        #expect(Set(mail.envelope.rcpt_tos) == ["jane@example.com", "boss@example.com"])
        let file = env.directory.appendingPathComponent("mail.eml")
        try mail.data.write(to: file)
        let script = """
            import email, sys
            from email import policy
            m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=policy.default)
            print(m['subject'])
            print(m['from'].addresses[0].display_name)
            print(m['cc'].addresses[0].display_name)
            print(m['x-campaign'])
            print(m.get_content_type())
            body = m.get_body(preferencelist=('plain',))
            print(body.get_content().splitlines()[1])
            print(len(body.get_content().splitlines()[2]))
            print(m.get_body(preferencelist=('html',)).get_content().strip())
            att = next(m.iter_attachments())
            print(att.get_filename())
            print(att.get_content().hex())
            """
        let result = try runProcess(URL(fileURLWithPath: "/usr/bin/python3"), ["-c", script, file.path])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n", maxSplits: 9, omittingEmptySubsequences: false).map(String.init)
        try #require(lines.count == 10, "\(result.output)")
        #expect(lines[0] == "Rapport hebdomadaire — ça marche ✓")
        #expect(lines[1] == "Zoë's Büro, Inc.")
        #expect(lines[2] == "Boss, The")
        #expect(lines[3] == "week-47")
        #expect(lines[4] == "multipart/mixed")
        #expect(lines[5] == ".leading dot")
        #expect(lines[6] == "3000")
        #expect(lines[7] == "<p>Bonjour <b>Jane</b></p>")
        #expect(lines[8] == "données.bin")
        #expect(lines[9].trimmingCharacters(in: .newlines) == attachment.map { String(format: "%02x", $0) }.joined(), "byte-identical attachment")
        let row = try daemon.row(id)
        #expect(row.messageIdHeader == mail.header("Message-ID"))
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func scheduledRowsWaitAndStaleRowsExpire(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: server.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let now = Date().timeIntervalSince1970
        let later = try daemon.enqueue(subject: "later", sendAt: now + 2)
        let stale = try daemon.enqueue(subject: "stale", expiresAt: now - 1)
        let soon = try daemon.enqueue(subject: "now")
        try daemon.waitFor(soon, .sent)
        #expect(try daemon.waitFor(stale, .expired).status == .expired)
        // Only while it is not due yet: a loaded machine may take seconds to get here.
        if Date().timeIntervalSince1970 < now + 1.5 { #expect(try daemon.row(later).status == .queued, "not before send_at") }
        let sent = try daemon.waitFor(later, .sent)
        #expect((sent.sentAt ?? 0) >= now + 2)
        #expect(!server.messages().contains { $0.header("Subject") == "stale" })
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func passwordResetsExpireAfterTheirCategoryTTL(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend, platformPort: closedPort(), delivery: ["retry_initial_s = 1", "retry_max_s = 1"],
            extraTOML: "[categories.password_reset]\nttl_s = 2")
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let id = try daemon.enqueue(tenant: nil, category: "password_reset")
        let row = try daemon.waitFor(id, .expired, timeout: 20)
        #expect(row.status == .expired)
        #expect(try daemon.attempts(id).count >= 1)
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func aDownConfigurationComesBackAfterASuccessfulProbe(_ backend: Backend) async throws {
        let env = try CtlEnvironment(backend: backend, platformPort: closedPort(), delivery: ["cooldown_s = 1", "retry_initial_s = 1", "retry_max_s = 1"])
        let server = try SMTPTestServer()
        // Down: the configuration points at a closed port, then is fixed without a verify.
        try env.addConfig(name: "main", port: server.port, extra: ["--fallback", "none"])
        try await env.withStore { store in
            let config = try #require(try await store.config(tenant: "acme", name: "main"))
            try await store.recordConfigStatus(id: config.id!, settingsVersion: config.settingsVersion, status: .error, errorKind: .connectionFailed, errorText: "was down")
        }
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let id = try daemon.enqueue()
        #expect(waitUntil(timeout: 15) { (try? daemon.config("acme", "main").status) == .verified }, "the probe found it up")
        #expect(try daemon.waitFor(id, .sent, timeout: 15).route == .default)
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func killNineMidBurstLosesNothing(_ backend: Backend) throws {
        let sink = try SinkServer()
        let env = try CtlEnvironment(backend: backend, queue: ["lease_s = 2"])
        try env.addConfig(name: "main", port: sink.port, extra: ["--max-connections", "4"])
        let daemon = DaemonProcess(env: env)
        try daemon.enqueueMany(400, subject: "burst")
        try daemon.start()
        #expect(waitUntil(timeout: 30) { (try? daemon.count(status: .sent)) ?? 0 >= 50 })
        daemon.stop(SIGKILL)
        let sendingAtKill = try daemon.count(status: .sending)
        try daemon.start()
        #expect(waitUntil(timeout: 60) { (try? daemon.count(status: .sent)) == 400 })
        #expect(try daemon.count(status: .sent) == 400)
        let subjects = sink.subjects()
        let counts = Dictionary(grouping: subjects, by: { $0 }).mapValues(\.count)
        #expect((0..<400).allSatisfy { counts["burst \($0)", default: 0] >= 1 }, "every message arrived")
        let duplicates = subjects.count - counts.count
        #expect(duplicates <= sendingAtKill, "\(duplicates) duplicates, \(sendingAtKill) in flight at the kill")
    }

    /// Not about SQLite: on PostgreSQL it is the scale-out case itself (claims with SKIP LOCKED,
    /// one daemon driving the configuration's connections at a time).
    @Test(arguments: [Backend.sqlite, .postgres]) func twoDaemonsOnOneDatabaseNeverSendARowTwice(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: server.port)
        let first = DaemonProcess(env: env), second = DaemonProcess(env: env)
        try first.start()
        try second.start()
        try first.enqueueMany(200, subject: "shared")
        #expect(waitUntil(timeout: 60) { (try? first.count(status: .sent)) == 200 })
        let subjects = server.messages().compactMap { $0.header("Subject") }
        #expect(subjects.count == 200, "\(subjects.count) deliveries for 200 rows")
        #expect(Set(subjects).count == 200)
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func editedConnectionSettingsReplaceThePool(_ backend: Backend) throws {
        let old = try SMTPTestServer(), new = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: old.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        try daemon.waitFor(try daemon.enqueue(subject: "before"), .sent)
        #expect(try env.ctl("config", "edit", "acme/main", "--port", "\(new.port)").status == 0)
        try daemon.waitFor(try daemon.enqueue(subject: "after"), .sent)
        #expect(old.messages().compactMap { $0.header("Subject") } == ["before"])
        #expect(new.messages().compactMap { $0.header("Subject") } == ["after"])
        #expect(waitUntil { old.events().contains("quit") }, "the old pool's connection was closed politely")
    }

    /// The route is resolved in the claim against the routing as committed: a message
    /// INSERTed right after a tenant's first `config add` leaves through it, not the relay.
    @Test(arguments: [Backend.sqlite, .postgres]) func aMessageRightAfterTheFirstConfigAddUsesIt(_ backend: Backend) throws {
        let relay = try SMTPTestServer(), tenant = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend, platformPort: relay.port)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        // Something for the daemon to do first, so its own routing view is warm.
        try daemon.waitFor(try daemon.enqueue(tenant: nil), .sent)
        for round in 0..<5 {
            let name = "c\(round)"
            #expect(try env.addConfig(tenant: "fresh\(round)", name: name, port: tenant.port).status == 0)
            let id = try daemon.enqueue(tenant: "fresh\(round)")
            let row = try daemon.waitFor(id, .sent)
            #expect(row.route == .default, "round \(round): \(row.route?.rawValue ?? "-")")
        }
        #expect(tenant.messages().count == 5)
        #expect(relay.messages().count == 1)
    }

    /// A row as the daemon leaves it after sending: enqueuers may not INSERT one like that.
    static func insertSent(_ db: Database, at sentAt: Double) throws -> Int64 {
        try db.execute(sql: "INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('report', '[\"a@b.test\"]', 's', 'b')")
        let id = db.lastInsertedRowID
        try db.execute(
            sql: "UPDATE messages SET status = 'sent', sent_at = ?, effective_priority = 3 WHERE id = ?", arguments: [sentAt, id])
        return id
    }

    /// `insertSent` on PostgreSQL, through `psql`.
    static func insertSent(_ psql: PSQL, at sentAt: Double) throws -> Int64 {
        var s = PSQL.Script()
        s.append(
            """
            BEGIN;
            INSERT INTO messages (category, rcpt_to, subject, text_body) VALUES ('report', '["a@b.test"]', 's', 'b') RETURNING id AS id \\gset
            UPDATE messages SET status = 'sent', sent_at = \(s.number(sentAt)), effective_priority = 3 WHERE id = :id;
            COMMIT;
            SELECT :id;

            """)
        return try psql.int64(s)
    }

    @Test(arguments: [Backend.sqlite, .postgres]) func sentMessagesArePurgedAfterRetention(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend, queue: ["retention_days = 1"])
        let daemon = DaemonProcess(env: env)
        let old = Date().timeIntervalSince1970 - 3 * 86400
        let id: Int64, recent: Int64
        switch backend {
        case .sqlite:
            id = try daemon.db.write { db -> Int64 in
                try Self.insertSent(db, at: old)
            }
            recent = try daemon.db.write { db -> Int64 in
                try Self.insertSent(db, at: Date().timeIntervalSince1970)
            }
        case .postgres:
            id = try Self.insertSent(daemon.psql, at: old)
            recent = try Self.insertSent(daemon.psql, at: Date().timeIntervalSince1970)
        }
        try daemon.start()
        #expect(try waitUntil(timeout: 10) { try daemon.rowIfPresent(id) == nil })
        #expect(try daemon.row(recent).status == .sent)
    }
}

/// Postfix's smtp-sink on 127.0.0.1, dumping each message to a file.
final class SinkServer: @unchecked Sendable {
    let port: Int
    let directory: URL
    private let process: Process

    /// `backlog`: connections the kernel queues before smtp-sink accepts them; `sessions`:
    /// how many it serves at once (smtp-sink's `-m`, 256 by default; the rest wait unanswered).
    init(backlog: Int = 64, sessions: Int = 256) throws {
        directory = Paths.temporaryDirectory("sink")
        let dumps = directory.appendingPathComponent("dumps")
        // smtp-sink writes its dumps as `nobody`.
        try FileManager.default.createDirectory(at: dumps, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o777])
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: dumps.path)
        var lastError: Error = TestServerError.didNotStart("no free port")
        for _ in 0..<5 {
            let port = closedPort()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/smtp-sink")
            process.arguments = ["-u", "nobody", "-m", "\(sessions)", "-d", dumps.path + "/", "127.0.0.1:\(port)", "\(backlog)"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            if waitUntil(timeout: 5, { canConnect(port) }) {
                self.port = port
                self.process = process
                return
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            lastError = TestServerError.didNotStart("smtp-sink did not listen on \(port)")
        }
        throw lastError
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// The Subject of every message received.
    func subjects() -> [String] {
        let dumps = directory.appendingPathComponent("dumps")
        let files = (try? FileManager.default.subpathsOfDirectory(atPath: dumps.path)) ?? []
        return files.compactMap { name in
            guard let data = FileManager.default.contents(atPath: dumps.appendingPathComponent(name).path) else { return nil }
            let text = String(decoding: data, as: UTF8.self)
            guard let range = text.range(of: "Subject: ") else { return nil }
            return String(text[range.upperBound...].prefix { $0 != "\r" && $0 != "\n" })
        }
    }
}

func canConnect(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}
