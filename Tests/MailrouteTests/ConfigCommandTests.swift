import Foundation
import Testing

@testable import MailrouteCore

/// `mailroutectl config …` run as a subprocess, as an operator would, against its own database.
@Suite struct ConfigCommandTests {
    let env: CtlEnvironment

    init() throws {
        env = try CtlEnvironment()
    }

    func config(_ label: String) throws -> [String: Any] {
        try env.json("config", "show", label)
    }

    func config(_ env: CtlEnvironment, _ label: String) throws -> [String: Any] {
        try env.json("config", "show", label)
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func firstConfigurationBecomesTheDefaultAndSetDefaultMovesIt(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        #expect(try env.addConfig(name: "main", port: 2525).status == 0)
        #expect(try env.addConfig(name: "brand", port: 2526).status == 0)
        #expect(try config(env, "acme/main")["is_default"] as? Bool == true)
        #expect(try config(env, "acme/brand")["is_default"] as? Bool == false)

        #expect(try env.ctl("config", "set-default", "acme/brand").status == 0)
        #expect(try config(env, "acme/main")["is_default"] as? Bool == false)
        #expect(try config(env, "acme/brand")["is_default"] as? Bool == true)
        let defaults = try env.jsonArray("config", "list", "--tenant", "acme").filter { $0["is_default"] as? Bool == true }
        #expect(defaults.count == 1)

        // Another tenant's first configuration is its own default.
        #expect(try env.addConfig(tenant: "globex", name: "main", port: 2525).status == 0)
        #expect(try config(env, "globex/main")["is_default"] as? Bool == true)
        #expect(try config(env, "acme/brand")["is_default"] as? Bool == true)
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func theDefaultCannotBeDeletedWhileOthersExist(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: 2525)
        try env.addConfig(name: "brand", port: 2526)
        let refused = try env.ctl("config", "delete", "acme/main")
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("acme/main is the default"))
        #expect(refused.stderr.split(separator: "\n").count == 1, "one-line reason")
        #expect(try env.jsonArray("config", "list").count == 2)

        #expect(try env.ctl("config", "delete", "acme/brand").status == 0)
        #expect(try env.ctl("config", "delete", "acme/main").status == 0, "the last one may go")
        #expect(try env.jsonArray("config", "list").isEmpty)
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func deletingAConfigurationRemovesItsRoutes(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: 2525)
        try env.addConfig(name: "brand", port: 2526)
        #expect(try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "brand").status == 0)
        #expect(try env.ctl("route", "set", "--tenant", "acme", "--category", "report", "--config", "brand").status == 0)
        #expect(try env.ctl("route", "set", "--tenant", "acme", "--cname", "mail.acme.test", "--config", "main").status == 0)
        let deleted = try env.ctl("config", "delete", "acme/brand")
        #expect(deleted.stdout.contains("2 route(s)"))
        let routes = try env.jsonArray("route", "list")
        #expect(routes.count == 1)
        #expect(routes.first?["config"] as? String == "acme/main")
        let resolved = try env.json("route", "resolve", "--tenant", "acme", "--advertiser", "adv-1")
        #expect(resolved["config"] as? String == "acme/main")
        #expect(resolved["route"] as? String == "default")
    }

    @Test(arguments: [
        (["--port", "0"], "--port"),
        (["--port", "65536"], "--port"),
        (["--security", "ssl"], "--security"),
        (["--username", String(repeating: "u", count: 256)], "--username"),
        (["--from-name", String(repeating: "n", count: 256)], "--from-name"),
        (["--priority", "0"], "--priority"),
        (["--priority", "6"], "--priority"),
        (["--reply-to", "not-an-address"], "--reply-to"),
        (["--authorized-domains", "good.test;bad domain"], "--authorized-domains"),
        (["--authorized-senders", "a@good.test;nobody"], "--authorized-senders"),
        (["--authorized-domains", "com"], "--authorized-domains"),
        (["--max-connections", "101"], "--max-connections"),
        (["--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (["--fallback", "relay"], "--fallback"),
        (["--dkim", "tenant"], "--dkim"),
        (["--host", "smtp example.com"], "--host"),
    ])
    func addRefusesOutOfRangeValues(extra: [String], field: String) throws {
        let result = try env.ctl(
            ["config", "add", "--tenant", "acme", "--name", "main", "--host", "smtp.acme.test", "--from-address", "a@acme.test"] + extra)
        #expect(result.status != 0)
        #expect(result.stderr.contains(field), "\(result.stderr) should name \(field)")
        #expect(try env.jsonArray("config", "list").isEmpty, "nothing was saved")
    }

    @Test(arguments: ["localhost", "mailhog", "127.0.0.1", "[::1]"])
    func addTakesHostsAsLocalSetupsNameThem(host: String) throws {
        let result = try env.ctl("config", "add", "--tenant", "acme", "--name", "main", "--host", host, "--from-address", "a@acme.test")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try env.json("config", "show", "acme/main")["host"] as? String == host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")))
    }

    @Test func authorizedListsAreNormalizedAndShown() throws {
        let added = try env.ctl(
            "config", "add", "--tenant", "acme", "--name", "main", "--host", "h.test", "--from-address", "a@acme.test",
            "--authorized-domains", "Brand.Example; mail.brand.example;Bücher.example", "--authorized-senders", "CEO@Other.Example",
            "--block-unauthorized")
        #expect(added.status == 0, "\(added.stderr)")
        let shown = try env.json("config", "show", "acme/main")
        #expect(shown["authorized_domains"] as? [String] == ["brand.example", "mail.brand.example", "xn--bcher-kva.example"])
        #expect(shown["authorized_senders"] as? [String] == ["CEO@Other.Example"])
        let text = try env.ctl("route", "resolve", "--tenant", "acme").stdout
        #expect(text.contains("brand.example; mail.brand.example; xn--bcher-kva.example"))
        #expect(text.contains("CEO@Other.Example"))
    }

    @Test(arguments: ["not-an-address", "a@", "Name <a@acme.test>", "a@acme.test\nBcc: x@y.test"])
    func addRefusesAnInvalidFromAddress(from: String) throws {
        let result = try env.ctl("config", "add", "--tenant", "acme", "--name", "main", "--host", "h.test", "--from-address", from)
        #expect(result.status != 0)
        #expect(result.stderr.contains("--from-address"))
    }

    @Test func requiredOptionsAreNamed() throws {
        let result = try env.ctl("config", "add", "--tenant", "acme", "--name", "main", "--from-address", "a@acme.test")
        #expect(result.status != 0)
        #expect(result.stderr.contains("--host"))
        #expect(try env.ctl("config", "add", "--tenant", "a/b", "--name", "x", "--host", "h.test", "--from-address", "a@h.test").stderr.contains("--tenant"))
    }

    @Test func passwordLimitIsEnforced() throws {
        let long = String(repeating: "p", count: 256)
        let result = try env.addConfig(name: "main", port: 2525, extra: ["--username", "u"], password: long)
        #expect(result.status != 0)
        #expect(result.stderr.contains("password"))
        #expect(!result.output.contains(long))
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func duplicateNamesAreRefusedWithinATenantOnly(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        #expect(try env.addConfig(name: "main", port: 2525).status == 0)
        let dup = try env.addConfig(name: "main", port: 2526)
        #expect(dup.status != 0)
        #expect(dup.stderr.contains("already exists"))
        #expect(try env.addConfig(tenant: "globex", name: "main", port: 2525).status == 0)
    }

    @Test func editingConnectionSettingsResetsTheStatus() async throws {
        try env.addConfig(name: "main", port: 2525)
        let store = try env.store()
        let record = try #require(try store.config(tenant: "acme", name: "main"))
        try await store.recordConfigStatus(id: record.id!, settingsVersion: record.settingsVersion, status: .verified, errorKind: nil, errorText: nil)
        #expect(try config("acme/main")["status"] as? String == "verified")

        // Sender identity and policy are not connection settings.
        #expect(try env.ctl("config", "edit", "acme/main", "--from-name", "Acme", "--priority", "2", "--fallback", "none").status == 0)
        #expect(try config("acme/main")["status"] as? String == "verified")
        #expect(try config("acme/main")["fallback"] as? String == "none")

        for change in [["--port", "2600"], ["--host", "other.test"], ["--security", "tls"], ["--username", "bob"]] {
            try await store.recordConfigStatus(
                id: record.id!, settingsVersion: try store.config(id: record.id!)!.settingsVersion, status: .verified,
                errorKind: nil, errorText: nil)
            #expect(try env.ctl(["config", "edit", "acme/main"] + change).status == 0)
            #expect(try config("acme/main")["status"] as? String == "not_verified", "\(change) resets the status")
        }
        // A new password too.
        try await store.recordConfigStatus(
            id: record.id!, settingsVersion: try store.config(id: record.id!)!.settingsVersion, status: .verified,
            errorKind: nil, errorText: nil)
        #expect(try env.ctl(["config", "edit", "acme/main", "--password-stdin"], stdin: "new-pass\n").status == 0)
        #expect(try config("acme/main")["status"] as? String == "not_verified")
    }

    @Test func aResultAboutOldSettingsIsNotRecorded() async throws {
        try env.addConfig(name: "main", port: 2525)
        let store = try env.store()
        let before = try #require(try store.config(tenant: "acme", name: "main"))
        try env.ctl("config", "edit", "acme/main", "--port", "2600")
        let recorded = try await store.recordConfigStatus(
            id: before.id!, settingsVersion: before.settingsVersion, status: .verified, errorKind: nil, errorText: nil)
        #expect(!recorded)
        #expect(try config("acme/main")["status"] as? String == "not_verified")
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func disabledConfigurationsAreSkippedAndNeverTheDefault(_ backend: Backend) throws {
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: 2525)
        try env.addConfig(name: "brand", port: 2526)
        try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "brand")
        #expect(try env.ctl("config", "disable", "acme/brand").status == 0)
        let resolved = try env.json("route", "resolve", "--tenant", "acme", "--advertiser", "adv-1")
        #expect(resolved["config"] as? String == "acme/main")
        #expect((resolved["trail"] as? [String])?.first?.contains("disabled") == true)

        let refused = try env.ctl("config", "set-default", "acme/brand")
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("disabled"))
        let disableDefault = try env.ctl("config", "disable", "acme/main")
        #expect(disableDefault.status != 0)
        #expect(disableDefault.stderr.contains("default"))

        #expect(try env.ctl("config", "enable", "acme/brand").status == 0)
        #expect(try env.json("route", "resolve", "--tenant", "acme", "--advertiser", "adv-1")["config"] as? String == "acme/brand")
    }

    @Test func unknownConfigurationsAreNamed() throws {
        let result = try env.ctl("config", "show", "acme/nope")
        #expect(result.status != 0)
        #expect(result.stderr.contains("acme/nope not found"))
        #expect(try env.ctl("config", "show", "no-slash").stderr.contains("TENANT/NAME"))
    }

    @Test func listAndShowAreTablesByDefault() throws {
        try env.addConfig(name: "main", port: 2525, extra: ["--from-name", "Acme Reports"])
        let list = try env.ctl("config", "list")
        #expect(list.stdout.hasPrefix("TENANT"))
        #expect(list.stdout.contains("127.0.0.1:2525"))
        let show = try env.ctl("config", "show", "acme/main")
        #expect(show.stdout.contains("Acme Reports <main@acme.test>"))
        #expect(show.stdout.contains("not_verified"))
    }

    @Test func globalOptionsMayComeBeforeTheSubcommand() throws {
        try env.addConfig(name: "main", port: 2525)
        let result = try runProcess(Paths.mailroutectl, ["--config", env.configPath, "--json", "config", "list"])
        #expect(result.status == 0)
        #expect(result.stdout.contains("\"tenant\" : \"acme\""))
    }

    @Test func migrateIsExplicitAndIdempotent() throws {
        #expect(try env.ctl("migrate").stdout.contains("v1-schema"))
        #expect(try env.ctl("migrate").status == 0)
    }
}

@Suite struct RouteCommandTests {
    let env: CtlEnvironment

    init() throws {
        env = try Self.environment(.sqlite)
    }

    static func environment(_ backend: Backend) throws -> CtlEnvironment {
        let env = try CtlEnvironment(backend: backend)
        try env.addConfig(name: "main", port: 2525)
        try env.addConfig(name: "brand", port: 2526)
        try env.addConfig(name: "reports", port: 2527)
        return env
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func resolveFollowsTheSpecOrderAndSaysWhy(_ backend: Backend) throws {
        let env = try Self.environment(backend)
        try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "brand")
        try env.ctl("route", "set", "--tenant", "acme", "--category", "report", "--config", "reports")
        try env.ctl("route", "set", "--tenant", "acme", "--cname", "Mail.Brand.Test", "--config", "brand")

        let adv = try env.json("route", "resolve", "--tenant", "acme", "--advertiser", "adv-1", "--category", "report")
        #expect(adv["config"] as? String == "acme/brand")
        #expect(adv["route"] as? String == "advertiser")

        let cname = try env.json("route", "resolve", "--tenant", "acme", "--cname", "mail.brand.test", "--category", "report")
        #expect(cname["route"] as? String == "cname")

        let category = try env.json("route", "resolve", "--tenant", "acme", "--advertiser", "adv-2", "--category", "report")
        #expect(category["config"] as? String == "acme/reports")
        #expect((category["trail"] as? [String]) == ["advertiser adv-2: no route", "category report: route to acme/reports"])

        let fallback = try env.json("route", "resolve", "--tenant", "acme", "--category", "invite")
        #expect(fallback["config"] as? String == "acme/main")
        #expect(fallback["route"] as? String == "default")

        let platform = try env.json("route", "resolve", "--tenant", "nobody")
        #expect(platform["route"] as? String == "platform")
        #expect(platform["server"] as? String == "127.0.0.1:2525")
        #expect(platform["from_address"] as? String == "platform@mailroute.test")

        let human = try env.ctl("route", "resolve", "--tenant", "acme", "--advertiser", "adv-1")
        #expect(human.stdout.contains("why:"))
        #expect(human.stdout.contains("advertiser adv-1: route to acme/brand"))
    }

    /// On either backend: every command of SPEC §5 works on both.
    @Test(arguments: Backend.allCases) func setMovesAnExistingRouteAndRemoveDeletesIt(_ backend: Backend) throws {
        let env = try Self.environment(backend)
        try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "brand")
        try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "reports")
        let routes = try env.jsonArray("route", "list", "--tenant", "acme")
        #expect(routes.count == 1)
        #expect(routes.first?["config"] as? String == "acme/reports")

        #expect(try env.ctl("route", "remove", "--tenant", "acme", "--advertiser", "adv-1").status == 0)
        #expect(try env.jsonArray("route", "list").isEmpty)
        let again = try env.ctl("route", "remove", "--tenant", "acme", "--advertiser", "adv-1")
        #expect(again.status != 0)
        #expect(again.stderr.contains("not found"))
    }

    @Test func wildcardCNAMEsAreRefused() throws {
        let result = try env.ctl("route", "set", "--tenant", "acme", "--cname", "*.brand.test", "--config", "brand")
        #expect(result.status != 0)
        #expect(result.stderr.contains("wildcard"))
        #expect(try env.jsonArray("route", "list").isEmpty)
    }

    @Test func aRouteMustPointAtTheTenantsOwnConfiguration() throws {
        try env.addConfig(tenant: "globex", name: "theirs", port: 2525)
        let result = try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "adv-1", "--config", "theirs")
        #expect(result.status != 0)
        #expect(result.stderr.contains("acme/theirs not found"))
    }

    @Test func exactlyOneKeyKind() throws {
        let none = try env.ctl("route", "set", "--tenant", "acme", "--config", "brand")
        #expect(none.status != 0)
        let two = try env.ctl("route", "set", "--tenant", "acme", "--advertiser", "a", "--category", "report", "--config", "brand")
        #expect(two.status != 0)
        #expect(two.stderr.contains("exactly one"))
        let badCategory = try env.ctl("route", "set", "--tenant", "acme", "--category", "Bad Name", "--config", "brand")
        #expect(badCategory.stderr.contains("--category"))
    }
}
