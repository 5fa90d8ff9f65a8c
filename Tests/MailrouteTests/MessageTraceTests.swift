import Foundation
import GRDB
import Testing

@testable import MailrouteCore

/// The message trace (issue 13): `MessageFilter`'s text forms, and the store's answer on
/// either backend. The trace through a running daemon is in `QueueCommandTests`.
@Suite struct MessageTraceTests {
    static let now = 1_796_083_200.0  // 2026-12-01T00:00:00Z

    // MARK: - The text forms

    @Test func theTextFormsParse() throws {
        let now = Self.now
        let filter = try MessageFilter(
            tenant: "acme", status: "sent", config: "acme/main", route: "fallback", since: "1h", domain: "@Example.COM", limit: "50",
            now: now)
        #expect(filter == MessageFilter(
            tenant: "acme", status: .sent, config: ConfigRef(tenant: "acme", name: "main"), route: .fallback, since: now - 3600,
            recipientDomain: "example.com", limit: 50))
        let nothing = try MessageFilter(tenant: nil, status: "", config: " ", route: nil, since: nil, domain: nil, limit: nil)
        #expect(nothing == MessageFilter(), "absent or empty is any, and the limit its default")
        #expect(nothing.limit == 100)

        let forms: [(String, Double)] = [
            ("-3600", now - 3600), ("90s", now - 90), ("30m", now - 1800), ("-30m", now - 1800), ("2d", now - 172_800),
            ("1.5h", now - 5400), ("1796083200", now), ("1796083200.5", now + 0.5), ("2026-12-01T00:00:00Z", now),
            ("2026-12-01T01:00:00+01:00", now), ("2026-12-01T00:00:00.250Z", now + 0.25), ("2026-12-01", now),
        ]
        for (text, expected) in forms {
            let since = try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: text, domain: nil, limit: nil, now: now).since
            #expect(since == expected, "\(text)")
        }
    }

    @Test func eachBadValueNamesItsField() {
        let cases: [(field: String, value: String)] = [
            ("tenant", "a/b"), ("status", "bogus"), ("config", "acme"), ("config", "acme/"), ("config", "/main"), ("config", "a/b/c"),
            ("route", "nowhere"), ("since", "yesterday"), ("since", "3600"), ("since", "1796083200000"), ("since", "nan"),
            ("since", "-inf"), ("since", "1e9"), ("since", "5w"), ("domain", "not a domain"), ("domain", "com"),
            ("domain", "a@x.com"), ("limit", "0"), ("limit", "1001"), ("limit", "ten"), ("limit", "-5"),
        ]
        for (field, value) in cases {
            func text(_ name: String) -> String? { name == field ? value : nil }
            do {
                _ = try MessageFilter(
                    tenant: text("tenant"), status: text("status"), config: text("config"), route: text("route"), since: text("since"),
                    domain: text("domain"), limit: text("limit"), now: Self.now)
                Issue.record("\(field)=\(value) was accepted")
            } catch MailrouteError.invalid(let named, let reason) {
                #expect(named == field, "\(field)=\(value): \(reason)")
            } catch {
                Issue.record("\(field)=\(value): \(error)")
            }
        }
        #expect(throws: MailrouteError.invalid(
            field: "since", reason: "3600 is not Unix seconds between 2000 and 2200 (milliseconds? divide by 1000; seconds ago? write -3600)")
        ) {
            try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: "3600", domain: nil, limit: nil)
        }
    }

    @Test func anInternationalizedDomainIsMatchedInBothSpellings() throws {
        let filter = try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: nil, domain: "Bücher.DE", limit: nil)
        #expect(filter.recipientDomainForms == ["bücher.de", "xn--bcher-kva.de"])
        #expect(MessageFilter(recipientDomain: "x.com").recipientDomainForms == ["x.com"])
    }

    // MARK: - The store, on either backend

    /// Rows as the daemon would leave them, the daemon's columns written directly.
    struct Fixture {
        let env: CtlEnvironment
        var ids: [String: Int64] = [:]

        init(_ backend: Backend) async throws {
            PostgresStore.deadline = .seconds(60)
            env = try CtlEnvironment(backend: backend)
            for (tenant, name) in [("acme", "main"), ("acme", "broken"), ("beta", "main")] {
                let added = try env.addConfig(tenant: tenant, name: name, port: 2525)
                guard added.status == 0 else { throw CtlError.setupFailed(added.output) }
            }
            let t = MessageTraceTests.now
            // name: tenant, to, cc, bcc, created_at
            let rows: [(String, String?, [String], [String]?, [String]?, Double)] = [
                ("plain", "acme", ["Jane <jane@x.com>"], nil, nil, t),
                ("tripped", "acme", ["bob@ax.com"], [#""a@x.com" <c@y.com>"#], nil, t + 10),
                ("whileDown", "acme", ["d@y.com"], nil, ["E@X.COM"], t + 20),
                ("subdomain", "acme", ["f@sub.x.com"], nil, nil, t + 30),
                ("beta", "beta", ["g@x.com"], nil, nil, t + 40),
                ("unicode", "acme", ["h@bücher.de"], nil, nil, t + 50),
                ("punycode", "acme", ["i@xn--bcher-kva.de"], nil, nil, t + 60),
                ("rerouted", "acme", ["j@z.com"], nil, nil, t + 70),
            ]
            let ids = try await env.withStore { store in
                var ids: [String: Int64] = [:]
                for (name, tenant, to, cc, bcc, created) in rows {
                    func json(_ list: [String]?) throws -> String? {
                        try list.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }
                    }
                    var message = MessageRecord(category: "report", rcptTo: try json(to)!, subject: name)
                    message.tenant = tenant
                    message.cc = try json(cc)
                    message.bcc = try json(bcc)
                    message.textBody = "x"
                    message.createdAt = created
                    ids[name] = try await store.enqueue(message, attachments: [])
                }
                return ids
            }
            self.ids = ids
            func config(_ tenant: String, _ name: String) -> String {
                "(SELECT id FROM smtp_configs WHERE tenant = '\(tenant)' AND name = '\(name)')"
            }
            func message(_ name: String, _ status: String, _ config: String, _ route: String) -> String {
                "UPDATE messages SET status = '\(status)', config_id = \(config), route = '\(route)' WHERE id = \(ids[name]!);\n"
            }
            func attempt(_ name: String, _ number: Int, _ label: String, _ route: String, _ outcome: String) -> String {
                let id = label == "platform" ? "NULL" : config(String(label.split(separator: "/")[0]), String(label.split(separator: "/")[1]))
                return """
                    INSERT INTO attempts (message_id, attempt, at, config_id, config_label, route, outcome)
                    VALUES (\(ids[name]!), \(number), \(t + 100), \(id), '\(label)', '\(route)', '\(outcome)');

                    """
            }
            var sql = message("plain", "sent", config("acme", "main"), "default") + attempt("plain", 1, "acme/main", "default", "sent")
            // Tried acme/broken, which tripped, then the relay.
            sql += message("tripped", "sent", config("acme", "broken"), "fallback")
                + attempt("tripped", 1, "acme/broken", "advertiser", "fallback") + attempt("tripped", 2, "platform", "fallback", "sent")
            // acme/broken was down already: straight to the relay, no try of its own.
            sql += message("whileDown", "sent", config("acme", "broken"), "fallback") + attempt("whileDown", 1, "platform", "fallback", "sent")
            sql += message("subdomain", "deferred", config("acme", "main"), "category")
                + attempt("subdomain", 1, "acme/main", "category", "deferred")
            sql += message("beta", "sent", config("beta", "main"), "default") + attempt("beta", 1, "beta/main", "default", "sent")
            // Tried through acme/broken once; its route has since moved to acme/main.
            sql += message("rerouted", "queued", config("acme", "main"), "default")
                + attempt("rerouted", 1, "acme/broken", "advertiser", "deferred")
            switch env.backend {
            case .sqlite: try await DatabaseQueue(path: env.databasePath).write { [sql] in try $0.execute(sql: sql) }
            case .postgres: try env.psql!.run(sql)
            }
        }

        func names(_ filter: MessageFilter) async throws -> [String] {
            let byID = Dictionary(uniqueKeysWithValues: ids.map { ($1, $0) })
            return try await env.withStore { try await $0.messages(filter) }.map { byID[$0.id!] ?? "?" }
        }
    }

    @Test(arguments: Backend.allCases) func eachFilterOnEitherBackend(_ backend: Backend) async throws {
        let f = try await Fixture(backend)
        let t = Self.now
        let broken = ConfigRef(tenant: "acme", name: "broken")
        #expect(try await f.names(MessageFilter()) == [
            "rerouted", "punycode", "unicode", "beta", "subdomain", "whileDown", "tripped", "plain",
        ], "newest first")
        #expect(try await f.names(MessageFilter(limit: 2)) == ["rerouted", "punycode"])
        #expect(try await f.names(MessageFilter(tenant: "beta")) == ["beta"])
        #expect(try await f.names(MessageFilter(status: .queued)) == ["rerouted", "punycode", "unicode"])
        #expect(try await f.names(MessageFilter(tenant: "acme", status: .sent)) == ["whileDown", "tripped", "plain"])
        #expect(try await f.names(MessageFilter(route: .fallback)) == ["whileDown", "tripped"])
        #expect(try await f.names(MessageFilter(since: t + 30)) == ["rerouted", "punycode", "unicode", "beta", "subdomain"], "at or after")

        // Routed to it, or tried through it.
        #expect(try await f.names(MessageFilter(config: broken)) == ["rerouted", "whileDown", "tripped"])
        #expect(try await f.names(MessageFilter(config: broken, route: .fallback)) == ["whileDown", "tripped"])
        #expect(try await f.names(MessageFilter(config: ConfigRef(tenant: "acme", name: "main"))) == ["rerouted", "subdomain", "plain"])
        #expect(try await f.names(MessageFilter(config: ConfigRef(tenant: "beta", name: "main"))) == ["beta"])
        #expect(try await f.names(MessageFilter(config: ConfigRef(tenant: "beta", name: "broken"))).isEmpty)
        #expect(try await f.names(MessageFilter(tenant: "beta", config: broken)).isEmpty)

        // Any recipient's whole domain: not a subdomain, not a longer name ending in it, not a
        // display name's text; bcc and upper case count.
        #expect(try await f.names(MessageFilter(recipientDomain: "x.com")) == ["beta", "whileDown", "plain"])
        #expect(try await f.names(MessageFilter(recipientDomain: "ax.com")) == ["tripped"])
        #expect(try await f.names(MessageFilter(recipientDomain: "y.com")) == ["whileDown", "tripped"])
        #expect(try await f.names(MessageFilter(recipientDomain: "sub.x.com")) == ["subdomain"])
        #expect(try await f.names(MessageFilter(recipientDomain: "com")).isEmpty)
        let idn = try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: nil, domain: "bücher.de", limit: nil)
        #expect(try await f.names(idn) == ["punycode", "unicode"])

        #expect(try await f.names(MessageFilter(tenant: "acme", since: t + 15, recipientDomain: "x.com")) == ["whileDown"])
        #expect(try await f.names(MessageFilter(config: broken, since: t + 15, recipientDomain: "y.com")) == ["whileDown"])
    }

    /// What the trace reads is found through indexes, not by reading every row and its body.
    @Test func theCommonTracesUseIndexes() throws {
        let store = try QueueStore(path: Paths.temporaryDirectory("trace").appendingPathComponent("q.db").path)
        func plan(_ filter: MessageFilter) throws -> String {
            try store.pool.read { db in
                try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + QueueStore.messagesQuery(filter).sql,
                                 arguments: QueueStore.messagesQuery(filter).arguments)
                    .map { $0["detail"] as String }.joined(separator: "\n")
            }
        }
        for filter in [MessageFilter(since: Self.now), MessageFilter(route: .fallback, since: Self.now)] {
            let since = try plan(filter)
            #expect(since.contains("messages_created") && since.contains("INTEGER PRIMARY KEY (rowid>?)"), "\(since)")
            #expect(!since.contains("TEMP B-TREE"), "no sort: \(since)")
        }
        let config = try plan(MessageFilter(config: ConfigRef(tenant: "acme", name: "main")))
        #expect(config.contains("messages_tenant") && config.contains("attempts_message"), "\(config)")
        let tenant = try plan(MessageFilter(tenant: "acme", status: .deferred))
        #expect(tenant.contains("messages_tenant"), "\(tenant)")
    }
}
