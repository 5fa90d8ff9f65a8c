import ArgumentParser
import Foundation
import MailrouteCore

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Manage tenants' SMTP configurations.",
        subcommands: [
            ConfigAdd.self, ConfigEdit.self, ConfigList.self, ConfigShow.self, ConfigDelete.self,
            ConfigSetDefault.self, ConfigEnable.self, ConfigDisable.self, ConfigVerify.self, ConfigTest.self,
        ])
}

/// The settings `add` and `edit` share.
struct ConfigSettingsOptions: ParsableArguments {
    @Option(help: "Configuration name, unique within the tenant (edit: renames).") var name: String?
    @Option(help: "SMTP server host name or IP address.") var host: String?
    @Option(help: "SMTP server port, 1-65535 (default 587).") var port: Int?
    @Option(help: "starttls (default), tls (implicit, port 465) or none.") var security: SMTPSecurity?
    @Option(help: "Login name; empty removes the login.") var username: String?
    @Flag(help: "Read the password from the first line of standard input.") var passwordStdin = false
    @Option(help: "Envelope and header sender address.") var fromAddress: String?
    @Option(help: "Sender display name, at most 255 characters.") var fromName: String?
    @Option(help: "Reply-To address; empty removes it.") var replyTo: String?
    @Option(help: "When this server fails: platform (send through the platform relay) or none (wait).")
    var fallback: FallbackPolicy?
    @Option(help: "platform (the platform signs) or server (the tenant's server signs).") var dkim: DKIMMode?
    @Option(help: "Sender domains a message may override From with, ';'-separated.") var authorizedDomains: String?
    @Option(help: "Sender addresses a message may override From with, ';'-separated.") var authorizedSenders: String?
    @Flag(inversion: .prefixedNo, help: "Refuse (rather than only log) messages from unauthorized senders.")
    var blockUnauthorized: Bool?
    @Option(help: "Default priority of this configuration's mail, 1 (highest) to 5.") var priority: Int?
    @Option(help: "Most connections open at once to this server (0: the config file's default).") var maxConnections: Int?
    @Option(help: "Most messages per minute through this server (0: no limit).") var ratePerMinute: Int?
    @Option(help: "PEM file of the CA that signed the server's certificate; empty: the system CAs.") var caFile: String?

    func input() throws -> SMTPConfigInput {
        var input = SMTPConfigInput()
        input.name = name
        input.host = host
        input.port = port
        input.security = security
        input.username = username
        input.fromAddress = fromAddress
        input.fromName = fromName
        input.replyTo = replyTo
        input.fallback = fallback
        input.dkim = dkim
        input.authorizedDomains = authorizedDomains
        input.authorizedSenders = authorizedSenders
        input.blockUnauthorized = blockUnauthorized
        input.priority = priority
        input.maxConnections = maxConnections
        input.ratePerMinute = ratePerMinute
        input.caFile = caFile
        if passwordStdin {
            guard let line = readLine(strippingNewline: true) else {
                throw MailrouteError.invalid(field: "--password-stdin", reason: "standard input is empty")
            }
            input.password = line
        }
        return input
    }
}

struct ConfigAdd: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add an SMTP configuration to a tenant.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The tenant that owns the configuration.") var tenant: String
    @OptionGroup var settings: ConfigSettingsOptions

    func execute() async throws {
        try await global.context.withService { service in
            let record = try await service.add(tenant: tenant, input: try settings.input())
            try ConfigShow.show(record, service: service, json: global.context.json)
        }
    }
}

struct ConfigEdit: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "edit", abstract: "Change settings of a configuration; connection changes reset it to not_verified.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String
    @OptionGroup var settings: ConfigSettingsOptions

    func execute() async throws {
        try await global.context.withService { service in
            let record = try await service.edit(try ConfigRef(parsing: ref), input: try settings.input())
            try ConfigShow.show(record, service: service, json: global.context.json)
        }
    }
}

struct ConfigList: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List configurations.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this tenant's.") var tenant: String?

    func execute() async throws {
        try await global.context.withService { service in
            if global.context.json { return try Output.json(try await service.views(tenant: tenant)) }
            let records = try await service.store.configs(tenant: tenant)
            Output.table(
                ["TENANT", "NAME", "SERVER", "SECURITY", "FROM", "DEFAULT", "ENABLED", "STATUS"],
                records.map { r in
                    [
                        r.tenant, r.name, "\(r.host):\(r.port)", r.security.rawValue, r.fromAddress,
                        r.isDefault ? "yes" : "", r.enabled ? "yes" : "no",
                        r.status.rawValue + (r.errorKind.map { " (\($0.rawValue))" } ?? ""),
                    ]
                })
        }
    }
}

struct ConfigShow: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one configuration.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String

    func execute() async throws {
        try await global.context.withService { service in
            try Self.show(try await service.existing(try ConfigRef(parsing: ref)), service: service, json: global.context.json)
        }
    }

    static func show(_ r: SMTPConfigRecord, service: ConfigurationService, json: Bool) throws {
        let view = service.view(of: r)
        let signing = DKIMSummary(r, keysDirectory: service.settings.dkim.keysDirectory)
        if json { return try Output.json(view) }
        var fields: [(String, String)] = [
            ("configuration", r.label),
            ("server", "\(r.host):\(r.port) (\(r.security.rawValue))"),
            ("username", r.username ?? "-"),
            ("password", r.hasPassword ? "set (encrypted)" : "not set"),
            ("from", r.fromName.map { "\($0) <\(r.fromAddress)>" } ?? r.fromAddress),
            ("reply-to", r.replyTo ?? "-"),
            ("default", r.isDefault ? "yes" : "no"),
            ("enabled", r.enabled ? "yes" : "no"),
            ("fallback", r.fallback.rawValue),
            ("dkim", "\(r.dkim.rawValue): \(signing.text)"),
            ("authorized domains", r.authorizedDomainList.isEmpty ? "(any)" : r.authorizedDomainList.joined(separator: "; ")),
            ("authorized senders", r.authorizedSenderList.isEmpty ? "(any)" : r.authorizedSenderList.joined(separator: "; ")),
            ("unauthorized senders", r.blockUnauthorized ? "blocked" : "logged and sent"),
            ("priority", "\(r.priority)"),
            ("max connections", "\(view.maxConnections)"),
            ("rate limit", r.ratePerMinute.map { "\($0)/min" } ?? "none"),
            ("ca file", r.caFile ?? "(system)"),
            ("status", r.status.rawValue),
        ]
        if let kind = r.errorKind {
            fields.append(("error", "\(kind.rawValue): \(r.errorText ?? "")"))
            if let action = kind.suggestedAction(for: r.errorText) { fields.append(("suggested action", action)) }
        }
        fields.append(("status since", formatTime(r.statusChangedAt)))
        Output.fields(fields)
    }
}

struct ConfigDelete: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete", abstract: "Delete a configuration and its routes (they fall back to the tenant default).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String

    func execute() async throws {
        try await global.context.withService { service in
            let config = try ConfigRef(parsing: ref)
            let routes = try await service.delete(config)
            if global.context.json { return try Output.object(["deleted": config.description, "routes_removed": routes]) }
            print("deleted \(config) and \(routes) route(s) to it")
        }
    }
}

struct ConfigSetDefault: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "set-default", abstract: "Make a configuration its tenant's default.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String

    func execute() async throws {
        try await global.context.withService { service in
            let config = try ConfigRef(parsing: ref)
            try await service.setDefault(config)
            if global.context.json { return try Output.object(["default": config.description]) }
            print("\(config) is now the default of tenant \(config.tenant)")
        }
    }
}

struct ConfigEnable: CtlCommand {
    static let configuration = CommandConfiguration(commandName: "enable", abstract: "Let routing use a configuration again.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String

    func execute() async throws { try await ConfigEnable.set(ref, enabled: true, global: global) }

    static func set(_ ref: String, enabled: Bool, global: GlobalOptions) async throws {
        try await global.context.withService { service in
            let config = try ConfigRef(parsing: ref)
            try await service.setEnabled(config, enabled)
            if global.context.json { return try Output.object(["config": config.description, "enabled": enabled]) }
            print("\(config) \(enabled ? "enabled" : "disabled")")
        }
    }
}

struct ConfigDisable: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "disable", abstract: "Make routing skip a configuration (its routes fall through).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String

    func execute() async throws { try await ConfigEnable.set(ref, enabled: false, global: global) }
}

struct ConfigVerify: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Connect, start TLS and log in without sending; record the status.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String

    func execute() async throws {
        try await global.context.withService { service in
            let result = try await service.verify(try ConfigRef(parsing: ref))
            try ConfigVerify.report(result, json: global.context.json, success: "verified: \(result.config) accepted the connection and login")
        }
    }

    /// `dkim`: for a test message, how it was signed (or why not).
    static func report(_ result: VerificationResult, json: Bool, success: String, dkim: String? = nil) throws {
        if json {
            try Output.json(VerificationView(result))
        } else if let error = result.error {
            var fields = [
                ("configuration", result.config), ("server", result.server),
                ("status", "error"), ("error", error.configErrorKind.rawValue),
                (error.textIsServerReply ? "server said" : "details", error.text),
            ]
            if let action = error.configErrorKind.suggestedAction(for: error.text) { fields.append(("suggested action", action)) }
            Output.fields(fields)
        } else {
            print(success)
            if let reply = result.finalReply { print("server replied: \(reply)") }
            if let dkim { print("DKIM: \(dkim)") }
        }
        if !result.succeeded { throw ExitCode.failure }
    }
}

struct ConfigTest: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "test", abstract: "Send a short real message through a configuration and print the server's reply.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "TENANT/NAME") var ref: String
    @Option(help: "Recipient of the test message.") var to: String

    func execute() async throws {
        try await global.context.withService { service in
            let config = try ConfigRef(parsing: ref)
            let result = try await service.test(config, to: to)
            let dkim = result.signedWith.isEmpty
                ? DKIMSummary(try await service.existing(config), keysDirectory: service.settings.dkim.keysDirectory).text
                : "signed as " + result.signedWith.joined(separator: ", ")
            try ConfigVerify.report(
                result, json: global.context.json, success: "sent: test message to \(to) through \(result.config)", dkim: dkim)
        }
    }
}
