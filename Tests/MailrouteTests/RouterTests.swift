import Testing

@testable import MailrouteCore

@Suite struct RouterTests {
    func config(_ id: Int64, _ name: String, tenant: String = "acme", enabled: Bool = true, isDefault: Bool = false)
        -> SMTPConfigRecord
    {
        var c = SMTPConfigRecord(tenant: tenant, name: name, host: "smtp.\(name).test", fromAddress: "x@\(name).test")
        c.id = id
        c.enabled = enabled
        c.isDefault = isDefault
        return c
    }

    func route(_ kind: RouteKind, _ key: String, _ configID: Int64, tenant: String = "acme") -> RouteRecord {
        RouteRecord(id: nil, tenant: tenant, kind: kind, key: key, configId: configID, createdAt: 0)
    }

    var table: RoutingTable {
        RoutingTable(
            configs: [
                config(1, "main", isDefault: true), config(2, "brand"), config(3, "wl"), config(4, "reports"),
                config(5, "off", enabled: false), config(6, "other", tenant: "globex", isDefault: true),
            ],
            routes: [
                route(.advertiser, "adv-1", 2), route(.cname, "mail.brand.test", 3), route(.category, "report", 4),
                route(.advertiser, "adv-off", 5), route(.category, "invite", 5),
                route(.advertiser, "adv-1", 6, tenant: "globex"),
            ])
    }

    @Test func advertiserBeatsCNAMEBeatsCategoryBeatsDefault() {
        let all = RoutingKeys(tenant: "acme", advertiser: "adv-1", cname: "mail.brand.test", category: "report")
        #expect(Router.resolve(all, in: table).config?.name == "brand")
        #expect(Router.resolve(all, in: table).step == .advertiser)

        var keys = all
        keys.advertiser = "adv-unknown"
        #expect(Router.resolve(keys, in: table).config?.name == "wl")
        #expect(Router.resolve(keys, in: table).step == .cname)

        keys.cname = "other.test"
        #expect(Router.resolve(keys, in: table).config?.name == "reports")
        #expect(Router.resolve(keys, in: table).step == .category)

        keys.category = "invite"  // routed to a disabled configuration: falls through
        let resolution = Router.resolve(keys, in: table)
        #expect(resolution.config?.name == "main")
        #expect(resolution.step == .default)
        #expect(resolution.trail.contains("category invite: route to acme/off, which is disabled"))
    }

    @Test func disabledAdvertiserRouteFallsThroughToTheNextStep() {
        let keys = RoutingKeys(tenant: "acme", advertiser: "adv-off", cname: "mail.brand.test")
        #expect(Router.resolve(keys, in: table).config?.name == "wl")
    }

    @Test func cnameIsComparedAsADNSName() {
        let keys = RoutingKeys(tenant: "acme", cname: "Mail.Brand.TEST.")
        #expect(Router.resolve(keys, in: table).config?.name == "wl")
    }

    @Test func routesBelongToTheirTenant() {
        #expect(Router.resolve(RoutingKeys(tenant: "globex", advertiser: "adv-1"), in: table).config?.label == "globex/other")
        #expect(Router.resolve(RoutingKeys(tenant: "globex", cname: "mail.brand.test"), in: table).config?.label == "globex/other")
    }

    @Test func noTenantOrNoConfigurationMeansThePlatformRelay() {
        let platform = Router.resolve(RoutingKeys(tenant: nil, advertiser: "adv-1"), in: table)
        #expect(platform.config == nil)
        #expect(platform.step == .platform)
        let unknown = Router.resolve(RoutingKeys(tenant: "initech", category: "report"), in: table)
        #expect(unknown.config == nil)
        #expect(unknown.step == .platform)
    }

    @Test func aSingleConfigurationTenantAlwaysUsesIt() {
        let single = RoutingTable(configs: [config(1, "only", isDefault: true)], routes: [])
        for keys in [
            RoutingKeys(tenant: "acme"), RoutingKeys(tenant: "acme", advertiser: "a", cname: "b.test", category: "report"),
        ] {
            #expect(Router.resolve(keys, in: single).config?.name == "only")
            #expect(Router.resolve(keys, in: single).step == .default)
        }
    }
}
