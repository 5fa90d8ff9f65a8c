import Foundation
import Hummingbird
import MailrouteCore

/// The JSON body of `POST /v1/configurations` and `PATCH …/{tenant}/{name}`: the options of
/// `config add` and `edit`, snake_case, lists as arrays. `password` is write-only.
struct ConfigBody: Decodable {
    var tenant: String?
    var name: String?
    var host: String?
    var port: Int?
    var security: SMTPSecurity?
    var username: String?
    var password: String?
    var fromAddress: String?
    var fromName: String?
    var replyTo: String?
    var fallback: FallbackPolicy?
    var dkim: DKIMMode?
    var authorizedDomains: [String]?
    var authorizedSenders: [String]?
    var blockUnauthorized: Bool?
    var priority: Int?
    var maxConnections: Int?
    var ratePerMinute: Int?
    var caFile: String?

    static let keys: Set<String> = [
        "tenant", "name", "host", "port", "security", "username", "password", "from_address", "from_name", "reply_to",
        "fallback", "dkim", "authorized_domains", "authorized_senders", "block_unauthorized", "priority", "max_connections",
        "rate_per_minute", "ca_file",
    ]

    var input: SMTPConfigInput {
        var input = SMTPConfigInput()
        input.name = name
        input.host = host
        input.port = port
        input.security = security
        input.username = username
        input.password = password
        input.fromAddress = fromAddress
        input.fromName = fromName
        input.replyTo = replyTo
        input.fallback = fallback
        input.dkim = dkim
        // Core keeps the CLI's `;`-separated form; an item holding `;` would split, so refuse it.
        input.authorizedDomains = authorizedDomains?.joined(separator: ";")
        input.authorizedSenders = authorizedSenders?.joined(separator: ";")
        input.blockUnauthorized = blockUnauthorized
        input.priority = priority
        input.maxConnections = maxConnections
        input.ratePerMinute = ratePerMinute
        input.caFile = caFile
        return input
    }

    func check() throws {
        for (field, list) in [("authorized_domains", authorizedDomains), ("authorized_senders", authorizedSenders)] {
            if let bad = list?.firstIndex(where: { $0.contains(";") }) {
                throw APIError.invalid("\(field)[\(bad)]", "one item per array element, without ';'")
            }
        }
    }
}

struct TestBody: Decodable {
    var to: String
    static let keys: Set<String> = ["to"]
}

/// `/v1/configurations`: SPEC §2's rules through `ConfigurationService`, as `mailroutectl config`.
struct ConfigurationsAPI {
    /// Built per request over the settings as last reloaded.
    let service: @Sendable () -> ConfigurationService
    let bodyLimit: Int

    func register(on group: RouterGroup<BasicRequestContext>) {
        group.get("configurations") { request, _ in
            try APIInput.onlyQuery(request, ["tenant"])
            return try JSONResponse.make(try await service().views(tenant: APIInput.query(request, "tenant")))
        }
        group.post("configurations") { request, _ in
            let body = try await APIInput.decode(ConfigBody.self, from: request, limit: bodyLimit, keys: ConfigBody.keys)
            try body.check()
            guard let tenant = body.tenant else { throw APIError.invalid("tenant", "is required") }
            let record = try await service().add(tenant: tenant, input: body.input)
            return try JSONResponse.make(service().view(of: record), status: .created)
        }
        group.get("configurations/{tenant}/{name}") { _, context in
            try JSONResponse.make(service().view(of: try await service().existing(ref(context))))
        }
        group.patch("configurations/{tenant}/{name}") { request, context in
            var keys = ConfigBody.keys
            keys.remove("tenant")
            let body = try await APIInput.decode(ConfigBody.self, from: request, limit: bodyLimit, keys: keys)
            try body.check()
            let record = try await service().edit(try ref(context), input: body.input)
            return try JSONResponse.make(service().view(of: record))
        }
        group.delete("configurations/{tenant}/{name}") { _, context in
            let config = try ref(context)
            let routes = try await service().delete(config)
            return try JSONResponse.object(["deleted": config.description, "routes_removed": routes])
        }
        group.post("configurations/{tenant}/{name}/verify") { _, context in
            try JSONResponse.make(VerificationView(try await service().verify(try ref(context))))
        }
        group.post("configurations/{tenant}/{name}/test") { request, context in
            let body = try await APIInput.decode(TestBody.self, from: request, limit: bodyLimit, keys: TestBody.keys)
            let config = try ref(context)
            _ = try Validate.address(body.to, field: "to")
            return try JSONResponse.make(VerificationView(try await service().test(config, to: body.to)))
        }
        group.post("configurations/{tenant}/{name}/default") { _, context in
            let config = try ref(context)
            try await service().setDefault(config)
            return try JSONResponse.object(["default": config.description])
        }
        group.post("configurations/{tenant}/{name}/enable") { _, context in
            try await setEnabled(context, true)
        }
        group.post("configurations/{tenant}/{name}/disable") { _, context in
            try await setEnabled(context, false)
        }
    }

    private func setEnabled(_ context: BasicRequestContext, _ enabled: Bool) async throws -> Response {
        let config = try ref(context)
        try await service().setEnabled(config, enabled)
        return try JSONResponse.object(["config": config.description, "enabled": enabled])
    }

    private func ref(_ context: BasicRequestContext) throws -> ConfigRef {
        ConfigRef(tenant: try context.parameters.require("tenant"), name: try context.parameters.require("name"))
    }
}
