import Foundation
import Testing

@testable import MailrouteCore

@Suite struct QueueCommandTests {
    @Test(arguments: Backend.allCases) func enqueueStoresWhatAServiceWouldAndTheDaemonSendsIt(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: server.port)
        let body = env.directory.appendingPathComponent("body.html")
        try "<p>Hi</p>".write(to: body, atomically: true, encoding: .utf8)
        let attachment = env.directory.appendingPathComponent("report.csv")
        try "day,clicks\nmon,3\n".write(to: attachment, atomically: true, encoding: .utf8)
        let result = try env.ctl(
            ["enqueue", "--tenant", "acme", "--category", "report", "--to", "a@example.com", "Bea <b@example.com>",
             "--subject", "Weekly", "--text", "-", "--html", body.path, "--attach", attachment.path, "--priority", "2", "--json"],
            stdin: "Plain body\n")
        #expect(result.status == 0, "\(result.output)")
        let id = try #require((try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])?["id"] as? Int)

        let shown = try env.json("queue", "show", "\(id)")
        #expect(shown["status"] as? String == "queued")
        // Lists as JSON arrays, attachments as objects, unset fields as null (issue 9).
        #expect(shown["rcpt_to"] as? [String] == ["a@example.com", "Bea <b@example.com>"])
        let attached = try #require((shown["attachments"] as? [[String: Any]])?.first)
        #expect(attached["filename"] as? String == "report.csv")
        #expect(attached["content_type"] as? String == "text/csv")
        #expect(attached["size"] as? Int == 17)
        for key in ["cc", "sent_at", "smtp_response", "last_error", "route", "advertiser"] {
            #expect(shown[key] is NSNull, "\(key) is present as null")
        }
        #expect(shown["attempt_log"] as? [Any] != nil)

        let daemon = DaemonProcess(env: env)
        try daemon.start()
        try daemon.waitFor(Int64(id), .sent)
        let human = try env.ctl("queue", "show", "\(id)")
        #expect(human.stdout.contains("sent"))
        #expect(human.stdout.contains("OUTCOME"), "the attempt log")
        #expect(human.stdout.contains("250 2.0.0 Ok: queued as TEST"))
        let stats = try env.json("queue", "stats")
        #expect(stats["sent"] as? Int == 1)
        #expect(stats["sent_last_minute"] as? Int == 1)
        #expect(try env.jsonArray("queue", "list", "--status", "sent").count == 1)
        #expect(try env.jsonArray("queue", "list", "--status", "queued").isEmpty)
        let log = try #require((try env.json("queue", "show", "\(id)")["attempt_log"] as? [[String: Any]])?.first)
        #expect(log["outcome"] as? String == "sent")
        #expect(log["smtp_code"] as? Int == 250)
        #expect(log["error_kind"] is NSNull)
    }

    /// The same keys in every object of a list, whatever is set, and acknowledgements with
    /// JSON's own numbers and booleans.
    @Test(arguments: Backend.allCases) func jsonIsStableForScripts(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: 2525)
        try env.addConfig(name: "other", port: 2526, extra: ["--from-name", "Other", "--rate-per-minute", "10"])
        let configs = try env.jsonArray("config", "list")
        #expect(configs.count == 2)
        #expect(Set(configs[0].keys) == Set(configs[1].keys))
        #expect(configs[0]["rate_per_minute"] is NSNull)
        #expect(configs[1]["rate_per_minute"] as? Int == 10)
        #expect(configs[0]["has_password"] as? Bool == false)
        let disabled = try env.json("config", "disable", "acme/other")
        #expect(disabled["enabled"] as? Bool == false)
        let deleted = try env.json("config", "delete", "acme/other")
        #expect(deleted["routes_removed"] as? Int == 0)
        let migrated = try env.json("migrate")
        let expected = backend == .sqlite ? Migrations.migrator.migrations : PostgresSchema.migrations.map(\.name)
        #expect((migrated["migrations"] as? [String]) == expected)
        let queued = try env.json("enqueue", "--category", "report", "--to", "a@example.com", "--subject", "s", "--text", "/dev/null")
        #expect(queued["id"] as? Int == 1)
    }

    @Test(arguments: Backend.allCases) func enqueueRefusesBadInputWithTheReason(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        let noBody = try env.ctl("enqueue", "--tenant", "acme", "--category", "report", "--to", "a@example.com", "--subject", "s")
        #expect(noBody.status != 0)
        #expect(noBody.stderr.contains("--text"))
        let badTo = try env.ctl("enqueue", "--category", "report", "--to", "nobody", "--subject", "s", "--text", "/dev/null")
        #expect(badTo.stderr.contains("rcpt_to[0]: \"nobody\""), "\(badTo.stderr)")
        let badCategory = try env.ctl("enqueue", "--category", "Bad", "--to", "a@example.com", "--subject", "s", "--text", "/dev/null")
        #expect(badCategory.status != 0)
        #expect(badCategory.stderr.contains("category"))
        let first = try env.ctl("enqueue", "--category", "report", "--to", "a@example.com", "--subject", "s", "--text", "/dev/null", "--idempotency-key", "k1")
        #expect(first.status == 0)
        let again = try env.ctl("enqueue", "--category", "report", "--to", "a@example.com", "--subject", "s", "--text", "/dev/null", "--idempotency-key", "k1")
        #expect(again.stderr.contains("idempotency key \"k1\" is already message"), "\(again.stderr)")
        #expect(try env.jsonArray("queue", "list").count == 1)
    }

    /// `sudo mailroutectl config list` before the daemon ever ran used to leave a root-owned
    /// 0644 database the daemon could not write.
    @Test(.enabled(if: geteuid() == 0, "needs root, as an operator's sudo"))
    func aDatabaseRootCreatesBelongsToTheStateDirectorysOwner() async throws {
        let env = try CtlEnvironment()
        let nobody = try #require(getpwnam("nobody")?.pointee)
        #expect(chown(env.directory.path, nobody.pw_uid, nobody.pw_gid) == 0)
        #expect(try env.ctl("config", "list").status == 0)
        // While a writer holds it open, the WAL exists: SQLite gives it the database's owner and mode.
        let store = try env.store()
        var message = MessageRecord(category: "report", rcptTo: #"["a@example.com"]"#, subject: "s")
        message.textBody = "b"
        _ = try await store.enqueue(message, attachments: [])
        for file in ["queue.db", "queue.db-wal", "queue.db-shm"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: env.directory.appendingPathComponent(file).path)
            #expect((attributes[.ownerAccountID] as? NSNumber)?.uint32Value == nobody.pw_uid, "\(file) owner")
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o660, "\(file) mode")
        }
    }

    @Test func aNewDatabaseIsNeverWorldReadable() throws {
        let env = try CtlEnvironment()
        #expect(try env.ctl("migrate").status == 0)
        let attributes = try FileManager.default.attributesOfItem(atPath: env.databasePath)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o660)
    }

    @Test(arguments: Backend.allCases) func cancelAndRetry(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        let queued = try env.json("enqueue", "--category", "report", "--to", "a@example.com", "--subject", "s", "--text", "/dev/null")
        let id = try #require(queued["id"] as? Int)
        #expect(try env.ctl("queue", "cancel", "\(id)").status == 0)
        #expect(try env.json("queue", "show", "\(id)")["status"] as? String == "cancelled")
        let twice = try env.ctl("queue", "cancel", "\(id)")
        #expect(twice.status != 0)
        #expect(try env.ctl("queue", "retry", "\(id)").status == 0)
        #expect(try env.json("queue", "show", "\(id)")["status"] as? String == "queued")
        #expect(try env.ctl("queue", "retry").status != 0, "an id or --failed")
        #expect(try env.ctl("queue", "show", "999").stderr.contains("message 999 not found"))
    }

    /// Issue 13's trace: which mail did a tenant's broken server affect, and where did it go,
    /// in one command: the mail that tripped it and the mail sent straight to the relay while
    /// it was down, and nothing else.
    @Test(arguments: Backend.allCases) func aBrokenServersMailIsTracedToTheRelay(_ backend: Backend) throws {
        let relay = try SMTPTestServer()
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(
            backend: backend, platformPort: relay.port, delivery: ["retry_initial_s = 60", "cooldown_s = 600", "connect_timeout_s = 2"])
        #expect(try env.addConfig(name: "main", port: server.port).status == 0)
        #expect(try env.addConfig(name: "broken", port: closedPort()).status == 0)
        #expect(try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-b", "--config", "broken").status == 0)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let tripped = try daemon.enqueue(to: ["a@brand.example"], subject: "trips it", advertiser: "adv-b")
        try daemon.waitFor(tripped, .sent)
        let whileDown = try daemon.enqueue(to: ["b@other.example"], subject: "while down", advertiser: "adv-b")
        let fine = try daemon.enqueue(to: ["c@brand.example"], subject: "through main")
        let platform = try daemon.enqueue(tenant: nil, to: ["d@brand.example"], subject: "platform mail")
        for id in [whileDown, fine, platform] { try daemon.waitFor(id, .sent) }

        func ids(_ arguments: String...) throws -> [Int64] {
            try env.jsonArray(["queue", "list"] + arguments).map { Int64($0["id"] as! Int) }
        }
        #expect(try ids("--config", "acme/broken", "--route", "fallback") == [whileDown, tripped])
        #expect(try ids("--config", "acme/broken") == [whileDown, tripped], "all of its mail went to the relay")
        #expect(try ids("--config", "acme/main") == [fine])
        #expect(try ids("--route", "fallback", "--since", "1h") == [whileDown, tripped])
        #expect(try ids("--route", "platform") == [platform])
        #expect(try ids("--domain", "brand.example") == [platform, fine, tripped])
        #expect(try ids("--domain", "brand.example", "--tenant", "acme", "--limit", "1") == [fine])
        #expect(try ids("--since", "2100-01-01T00:00:00Z").isEmpty)
        let traced = try env.jsonArray("queue", "list", "--config", "acme/broken", "--route", "fallback")
        #expect(traced.allSatisfy { $0["status"] as? String == "sent" && $0["route"] as? String == "fallback" })
        #expect(Set(traced[0].keys) == Set(try env.jsonArray("queue", "list")[0].keys), "the same objects as ever")

        let table = try env.ctl("queue", "list", "--config", "acme/broken", "--route", "fallback")
        #expect(table.status == 0, "\(table.output)")
        #expect(table.stdout.contains("while down") && table.stdout.contains("trips it") && !table.stdout.contains("through main"))
        let row = try #require(table.stdout.split(separator: "\n").first { $0.contains("while down") })
        #expect(row.contains("acme/broken") && row.contains("fallback"), "the configuration it was for, and the route it took")

        // One line naming the option, as every command's errors.
        for (option, value) in [("--config", "acme"), ("--route", "nowhere"), ("--since", "yesterday"), ("--domain", "x"),
                                ("--limit", "0"), ("--status", "gone")] {
            let bad = try env.ctl("queue", "list", option, value)
            #expect(bad.status != 0)
            #expect(bad.stderr.hasPrefix("mailroutectl: \(option): "), "\(bad.stderr)")
        }
    }
}
