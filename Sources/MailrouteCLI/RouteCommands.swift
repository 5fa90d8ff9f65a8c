import ArgumentParser
import MailrouteCore

struct RouteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route", abstract: "Assign advertisers, whitelabel CNAMEs and categories to configurations.",
        subcommands: [RouteSet.self, RouteList.self, RouteRemove.self, RouteResolve.self])
}

/// Exactly one of the three route keys.
struct RouteKeyOptions: ParsableArguments {
    @Option(help: "An advertiser id.") var advertiser: String?
    @Option(help: "A whitelabel domain (no wildcards).") var cname: String?
    @Option(help: "A message category.") var category: String?

    func validate() throws {
        if [advertiser, cname, category].compactMap({ $0 }).count != 1 {
            throw ValidationError("give exactly one of --advertiser, --cname, --category")
        }
    }

    var key: (RouteKind, String) {
        if let advertiser { return (.advertiser, advertiser) }
        if let cname { return (.cname, cname) }
        return (.category, category!)
    }
}

struct RouteSet: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "set", abstract: "Route a key to a configuration.")
    @OptionGroup var global: GlobalOptionsWithoutConfig
    @Option(help: "The tenant.") var tenant: String
    @OptionGroup var keys: RouteKeyOptions
    @Option(help: "Name of the tenant's configuration.") var config: String

    func execute() async throws {
        try await global.context.withService { service in
            let (kind, key) = keys.key
            let route = try await service.setRoute(tenant: tenant, kind: kind, key: key, configName: config)
            if global.context.json { return try Output.json(RouteView(tenant: route.tenant, kind: kind.rawValue, key: route.key, config: "\(tenant)/\(config)")) }
            print("\(tenant) \(kind.rawValue) \(route.key) -> \(tenant)/\(config)")
        }
    }
}

struct RouteList: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List routes.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this tenant's.") var tenant: String?

    func execute() async throws {
        try await global.context.withService { service in
            let views = try await service.routeViews(tenant: tenant)
            if global.context.json { return try Output.json(views) }
            Output.table(["TENANT", "KIND", "KEY", "CONFIG"], views.map { [$0.tenant, $0.kind, $0.key, $0.config] })
        }
    }
}

struct RouteRemove: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a route.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The tenant.") var tenant: String
    @OptionGroup var keys: RouteKeyOptions

    func execute() async throws {
        try await global.context.withService { service in
            let (kind, key) = keys.key
            try await service.removeRoute(tenant: tenant, kind: kind, key: key)
            if global.context.json { return try Output.object(["removed": ["tenant": tenant, "kind": kind.rawValue, "key": key]]) }
            print("removed \(tenant) \(kind.rawValue) \(key)")
        }
    }
}

struct RouteResolve: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve", abstract: "Say which configuration a message with these keys would use, and why.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The tenant (omit for platform mail).") var tenant: String?
    @Option(help: "Advertiser id.") var advertiser: String?
    @Option(help: "Whitelabel domain.") var cname: String?
    @Option(help: "Message category.") var category: String?

    func execute() async throws {
        try await global.context.withService { service in
            let keys = RoutingKeys(tenant: tenant, advertiser: advertiser, cname: cname, category: category)
            let resolution = try await service.resolve(keys)
            let config = resolution.config
            let view = ResolutionView(resolution, keys: keys, platform: service.settings.platform)
            if global.context.json { return try Output.json(view) }
            var fields = [
                ("configuration", view.config ?? "platform relay"),
                ("route", view.route),
                ("server", view.server ?? "-"),
                ("from", view.fromAddress ?? "-"),
            ]
            if let config {
                fields.append(("status", config.status.rawValue + (config.errorKind.map { " (\($0.rawValue))" } ?? "")))
                fields.append(("authorized domains", config.authorizedDomainList.isEmpty ? "(any)" : config.authorizedDomainList.joined(separator: "; ")))
                fields.append(("authorized senders", config.authorizedSenderList.isEmpty ? "(any)" : config.authorizedSenderList.joined(separator: "; ")))
            }
            Output.fields(fields)
            print("why:")
            for line in resolution.trail { print("  \(line)") }
        }
    }
}
