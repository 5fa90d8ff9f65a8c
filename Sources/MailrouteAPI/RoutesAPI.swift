import Foundation
import Hummingbird
import MailrouteCore

struct RouteBody: Decodable {
    var tenant: String
    var kind: RouteKind
    var key: String
    /// The tenant's configuration: `NAME`, or `TENANT/NAME` as `GET /v1/routes` shows it.
    var config: String?

    static let putKeys: Set<String> = ["tenant", "kind", "key", "config"]
    static let deleteKeys: Set<String> = ["tenant", "kind", "key"]

    func configName() throws -> String {
        guard let config, !config.isEmpty else { throw APIError.invalid("config", "is required") }
        guard config.contains("/") else { return config }
        let ref = try ConfigRef(parsing: config)
        guard ref.tenant == tenant else {
            throw APIError.invalid("config", "\(config) is not a configuration of tenant \(tenant); a route points within its tenant")
        }
        return ref.name
    }
}

/// `/v1/routes`, as `mailroutectl route`.
struct RoutesAPI {
    /// Built per request over the settings as last reloaded.
    let service: @Sendable () -> ConfigurationService
    let bodyLimit: Int

    func register(on group: RouterGroup<BasicRequestContext>) {
        group.get("routes") { request, _ in
            try APIInput.onlyQuery(request, ["tenant"])
            return try JSONResponse.make(try await service().routeViews(tenant: APIInput.query(request, "tenant")))
        }
        group.put("routes") { request, _ in
            let body = try await APIInput.decode(RouteBody.self, from: request, limit: bodyLimit, keys: RouteBody.putKeys)
            let name = try body.configName()
            let route = try await service().setRoute(tenant: body.tenant, kind: body.kind, key: body.key, configName: name)
            return try JSONResponse.make(RouteView(tenant: route.tenant, kind: body.kind.rawValue, key: route.key, config: "\(route.tenant)/\(name)"))
        }
        group.delete("routes") { request, _ in
            let body = try await APIInput.decode(RouteBody.self, from: request, limit: bodyLimit, keys: RouteBody.deleteKeys)
            try await service().removeRoute(tenant: body.tenant, kind: body.kind, key: body.key)
            return try JSONResponse.object(["removed": ["tenant": body.tenant, "kind": body.kind.rawValue, "key": body.key]])
        }
        group.get("routes/resolve") { request, _ in
            try APIInput.onlyQuery(request, ["tenant", "advertiser", "cname", "category"])
            let keys = RoutingKeys(
                tenant: APIInput.query(request, "tenant"), advertiser: APIInput.query(request, "advertiser"),
                cname: APIInput.query(request, "cname"), category: APIInput.query(request, "category"))
            let resolution = try await service().resolve(keys)
            return try JSONResponse.make(ResolutionView(resolution, keys: keys, platform: service().settings.platform))
        }
    }
}
