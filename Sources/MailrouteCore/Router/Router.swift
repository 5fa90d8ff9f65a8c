/// The keys a message carries for routing.
public struct RoutingKeys: Sendable, Equatable {
    public var tenant: String?
    public var advertiser: String?
    public var cname: String?
    public var category: String?

    public init(tenant: String?, advertiser: String? = nil, cname: String? = nil, category: String? = nil) {
        self.tenant = tenant
        self.advertiser = advertiser
        self.cname = cname
        self.category = category
    }
}

/// A snapshot of configurations and routes, indexed for lookups.
public struct RoutingTable: Sendable {
    public let configs: [Int64: SMTPConfigRecord]
    private let routes: [RouteIndex: Int64]
    private let defaults: [String: Int64]

    struct RouteIndex: Hashable {
        let tenant: String
        let kind: RouteKind
        let key: String
    }

    public init(configs: [SMTPConfigRecord], routes: [RouteRecord]) {
        var byID: [Int64: SMTPConfigRecord] = [:]
        var defaults: [String: Int64] = [:]
        for config in configs {
            guard let id = config.id else { continue }
            byID[id] = config
            if config.isDefault { defaults[config.tenant] = id }
        }
        self.configs = byID
        self.defaults = defaults
        var index: [RouteIndex: Int64] = [:]
        for route in routes {
            index[RouteIndex(tenant: route.tenant, kind: route.kind, key: route.key)] = route.configId
        }
        self.routes = index
    }

    func route(_ tenant: String, _ kind: RouteKind, _ key: String) -> SMTPConfigRecord? {
        routes[RouteIndex(tenant: tenant, kind: kind, key: key)].flatMap { configs[$0] }
    }

    func defaultConfig(of tenant: String) -> SMTPConfigRecord? {
        defaults[tenant].flatMap { configs[$0] }
    }
}

/// Which configuration a message leaves through, and why.
public struct RouteResolution: Sendable, Equatable {
    /// nil: the platform relay.
    public var config: SMTPConfigRecord?
    public var step: RouteStep
    /// One line per step considered, in order, ending with the one taken.
    public var trail: [String]
}

/// SPEC §2's routing order: advertiser > cname > category > tenant default > platform relay.
/// The first step that exists and whose configuration is enabled wins.
public enum Router {
    /// - Parameter explain: build the `trail` (`route resolve` shows it); the claim, which
    ///   resolves every candidate row, does without those strings.
    public static func resolve(_ keys: RoutingKeys, in table: RoutingTable, explain: Bool = true) -> RouteResolution {
        guard explain else { return resolveQuietly(keys, in: table) }
        var trail: [String] = []
        guard let tenant = keys.tenant else {
            trail.append("no tenant: platform mail")
            return RouteResolution(config: nil, step: .platform, trail: trail)
        }
        let candidates: [(RouteKind, String?)] = [
            (.advertiser, keys.advertiser),
            (.cname, keys.cname.map(normalizeCNAME)),
            (.category, keys.category),
        ]
        for (kind, key) in candidates {
            guard let key, !key.isEmpty else { continue }
            guard let config = table.route(tenant, kind, key) else {
                trail.append("\(kind.rawValue) \(key): no route")
                continue
            }
            guard config.enabled else {
                trail.append("\(kind.rawValue) \(key): route to \(config.label), which is disabled")
                continue
            }
            trail.append("\(kind.rawValue) \(key): route to \(config.label)")
            return RouteResolution(config: config, step: RouteStep(rawValue: kind.rawValue)!, trail: trail)
        }
        if let config = table.defaultConfig(of: tenant), config.enabled {
            trail.append("tenant \(tenant): default \(config.label)")
            return RouteResolution(config: config, step: .default, trail: trail)
        }
        trail.append("tenant \(tenant): no default configuration, platform relay")
        return RouteResolution(config: nil, step: .platform, trail: trail)
    }

    /// The same order as `resolve`, without the explanation.
    static func resolveQuietly(_ keys: RoutingKeys, in table: RoutingTable) -> RouteResolution {
        guard let tenant = keys.tenant else { return RouteResolution(config: nil, step: .platform, trail: []) }
        if let key = keys.advertiser, !key.isEmpty, let config = table.route(tenant, .advertiser, key), config.enabled {
            return RouteResolution(config: config, step: .advertiser, trail: [])
        }
        if let key = keys.cname.map(normalizeCNAME), !key.isEmpty, let config = table.route(tenant, .cname, key), config.enabled {
            return RouteResolution(config: config, step: .cname, trail: [])
        }
        if let key = keys.category, !key.isEmpty, let config = table.route(tenant, .category, key), config.enabled {
            return RouteResolution(config: config, step: .category, trail: [])
        }
        if let config = table.defaultConfig(of: tenant), config.enabled {
            return RouteResolution(config: config, step: .default, trail: [])
        }
        return RouteResolution(config: nil, step: .platform, trail: [])
    }

    /// CNAMEs are DNS names: compared without case and without the root dot.
    public static func normalizeCNAME(_ name: String) -> String {
        var lower = name.lowercased()
        if lower.hasSuffix(".") { lower.removeLast() }
        return lower
    }
}
