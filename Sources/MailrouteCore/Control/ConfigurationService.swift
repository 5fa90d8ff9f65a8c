import Foundation

/// The operations behind `mailroutectl config` and `route`: SPEC §2's rules on top of the store.
public struct ConfigurationService: Sendable {
    public let settings: MailrouteConfiguration
    public let store: any QueueBackend
    private let environment: [String: String]

    public init(settings: MailrouteConfiguration, store: any QueueBackend, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.settings = settings
        self.store = store
        self.environment = environment
    }

    /// The queue's operations over the same settings and store.
    public var queue: QueueService { QueueService(settings: settings, store: store) }

    func secretBox() async throws -> SecretBox {
        do {
            return try KeyFile.load(configured: settings.secrets.keyFile, environment: environment)
        } catch SecretError.noKey(let searched, _) {
            throw SecretError.noKey(searched: searched, sealedPasswords: try await store.sealedPasswordCount())
        }
    }

    // MARK: - Configurations

    public func add(tenant: String, input: SMTPConfigInput) async throws -> SMTPConfigRecord {
        let tenant = try Validate.identifier(tenant, field: "--tenant")
        guard let name = input.name else { throw MailrouteError.invalid(field: "--name", reason: "is required") }
        guard let host = input.host else { throw MailrouteError.invalid(field: "--host", reason: "is required") }
        guard let from = input.fromAddress else { throw MailrouteError.invalid(field: "--from-address", reason: "is required") }
        var record = SMTPConfigRecord(tenant: tenant, name: name, host: host, fromAddress: from)
        let box = input.password?.isEmpty == false ? try await secretBox() : nil
        try input.apply(to: &record, seal: { try box!.seal($0) })
        try await checkHost(record.host)
        return try await store.insertConfig(record)
    }

    public func edit(_ ref: ConfigRef, input: SMTPConfigInput) async throws -> SMTPConfigRecord {
        var record = try await existing(ref)
        let box = input.password?.isEmpty == false ? try await secretBox() : nil
        try input.apply(to: &record, seal: { try box!.seal($0) })
        if input.host != nil { try await checkHost(record.host) }
        return try await store.updateConfig(record)
    }

    /// SPEC §4 "Tenant-supplied hosts", early: a clear error at `add`/`edit` for a host that is,
    /// or resolves now to, an inward address. Delivery checks again at every connection.
    private func checkHost(_ host: String) async throws {
        // A name is looked up: the resolver may take seconds, so not on the cooperative pool.
        let policy = settings.delivery.networkPolicy
        if let reason = try await BlockingWork.run("resolve \(host)", { policy.refusal(ofHost: host) }) {
            throw MailrouteError.invalid(field: "--host", reason: reason)
        }
    }

    public func existing(_ ref: ConfigRef) async throws -> SMTPConfigRecord {
        guard let record = try await store.config(tenant: ref.tenant, name: ref.name) else {
            throw MailrouteError.notFound("configuration \(ref)")
        }
        return record
    }

    /// The endpoint libcurl connects to, with the password opened for this use only.
    public func endpoint(for record: SMTPConfigRecord) async throws -> SMTPEndpoint {
        let box = record.passwordSealed == nil ? nil : try await secretBox()
        let password = try record.passwordSealed.map { try box!.open($0) }
        return SMTPEndpoint(config: record, password: password, delivery: settings.delivery)
    }

    /// Logs in and QUITs, sending nothing; records the result as the configuration's status.
    public func verify(_ ref: ConfigRef) async throws -> VerificationResult {
        let record = try await existing(ref)
        let endpoint = try await endpoint(for: record)
        let result = try await BlockingWork.run("verify \(record.label)") { SMTPConnection(endpoint: endpoint).verify() }
        return try await recordOutcome(result.map { _ in nil }, for: record)
    }

    /// Sends a short real message to `recipient` and records the outcome as the status.
    public func test(_ ref: ConfigRef, to recipient: String) async throws -> VerificationResult {
        let record = try await existing(ref)
        let to = try EmailAddress(parsing: recipient)
        let endpoint = try await endpoint(for: record)
        var message = OutgoingMessage(
            from: try EmailAddress(address: record.fromAddress, displayName: record.fromName),
            to: [to],
            subject: "Mailroute test of \(record.label)",
            textBody: """
                This is a test message from Mailroute.

                It was sent through \(endpoint.server) (\(record.security.rawValue)) with the SMTP configuration \(record.label).
                If you can read it, this configuration delivers mail.
                """)
        if let replyTo = record.replyTo { message.replyTo = try EmailAddress(address: replyTo) }
        // Signed as the daemon would sign this configuration's mail, so the test checks DKIM
        // and DMARC the way real mail leaves.
        let keys = DKIMKeyring.load(directory: settings.dkim.keysDirectory).signingKeys(forSender: record.fromAddress, mode: record.dkim)
        var bytes = MessageComposer.compose(message).bytes
        if !keys.isEmpty { bytes = try DKIMSigner.sign(bytes, keys: keys, now: Date()) }
        // Through the daemon's own transport (a pool of one connection on the engine thread),
        // so the test speaks to the server exactly as delivery will: pipelining and all.
        let pool = CurlMultiPool(
            name: record.label, endpoint: endpoint,
            limits: PoolLimits(maxConnections: 1, maxMessagesPerConnection: 1, idleTimeout: 0), engine: .shared)
        let completion = try await BlockingWork.run("test \(record.label)") { [bytes] in
            let completion = pool.sendAndWait(from: record.fromAddress, to: [to.address], data: bytes)
            _ = pool.closeAndWait(timeout: min(5, endpoint.commandTimeoutSeconds))
            return completion
        }
        let result: Result<String?, DeliveryError>
        switch completion {
        case .sent(let report): result = .success(report.reply?.line)
        case .failed(let error): result = .failure(error)
        case .verified, .notStarted:
            result = .failure(DeliveryError(kind: .unknown, text: "the test message was not sent", isTemporary: true))
        }
        var outcome = try await recordOutcome(result, for: record)
        outcome.signedWith = keys.map(\.label)
        return outcome
    }

    private func recordOutcome(_ result: Result<String?, DeliveryError>, for record: SMTPConfigRecord) async throws -> VerificationResult {
        switch result {
        case .success(let reply):
            try await store.recordConfigStatus(id: record.id!, settingsVersion: record.settingsVersion, status: .verified, errorKind: nil, errorText: nil, firstProbeAt: nil)
            return VerificationResult(config: record.label, server: "\(record.host):\(record.port)", error: nil, finalReply: reply)
        case .failure(let error):
            try await store.recordConfigStatus(
                id: record.id!, settingsVersion: record.settingsVersion, status: .error, errorKind: error.configErrorKind,
                errorText: error.text,
                firstProbeAt: ConfigHealth(breakerTimeouts: settings.delivery.breakerTimeouts, cooldownSeconds: settings.delivery.cooldownSeconds)
                    .firstProbe(now: QueueStore.now()))
            return VerificationResult(config: record.label, server: "\(record.host):\(record.port)", error: error, finalReply: nil)
        }
    }

    /// The configurations as `config list --json` and `GET /v1/configurations` show them.
    public func views(tenant: String?) async throws -> [ConfigView] {
        let records = try await store.configs(tenant: tenant)
        return records.map { ConfigView($0, defaultMaxConnections: settings.delivery.defaultMaxConnections) }
    }

    /// One configuration as `config show` shows it: with the keys that would sign its mail.
    public func view(of record: SMTPConfigRecord) -> ConfigView {
        var view = ConfigView(record, defaultMaxConnections: settings.delivery.defaultMaxConnections)
        view.dkimKeys = DKIMSummary(record, keysDirectory: settings.dkim.keysDirectory).keys
        return view
    }

    /// Deletes a configuration and its routes (SPEC §2: not the default while others remain);
    /// returns how many routes went with it.
    public func delete(_ ref: ConfigRef) async throws -> Int {
        try await store.deleteConfig(tenant: ref.tenant, name: ref.name)
    }

    public func setDefault(_ ref: ConfigRef) async throws {
        try await store.setDefault(tenant: ref.tenant, name: ref.name)
    }

    public func setEnabled(_ ref: ConfigRef, _ enabled: Bool) async throws {
        try await store.setEnabled(tenant: ref.tenant, name: ref.name, enabled: enabled)
    }

    // MARK: - Routes

    /// The routes as `route list --json` and `GET /v1/routes` show them.
    public func routeViews(tenant: String?) async throws -> [RouteView] {
        let table = try await store.routingTable(tenant: tenant)
        return try await store.routes(tenant: tenant).map { route in
            RouteView(tenant: route.tenant, kind: route.kind.rawValue, key: route.key, config: table.configs[route.configId].map(\.label) ?? "?")
        }
    }

    public func setRoute(tenant: String, kind: RouteKind, key: String, configName: String) async throws -> RouteRecord {
        let tenant = try Validate.identifier(tenant, field: "--tenant")
        let key = try Validate.routeKey(key, kind: kind)
        return try await store.setRoute(tenant: tenant, kind: kind, key: key, configName: configName)
    }

    public func removeRoute(tenant: String, kind: RouteKind, key: String) async throws {
        let key = try Validate.routeKey(key, kind: kind)
        try await store.removeRoute(tenant: tenant, kind: kind, key: key)
    }

    public func resolve(_ keys: RoutingKeys) async throws -> RouteResolution {
        var keys = keys
        if let cname = keys.cname { keys.cname = try Validate.routeKey(cname, kind: .cname) }
        let table = try await store.routingTable(tenant: keys.tenant)
        return Router.resolve(keys, in: table)
    }
}

/// `tenant/name`, how the CLI names one configuration.
public struct ConfigRef: Sendable, Equatable, CustomStringConvertible {
    public var tenant: String
    public var name: String

    public init(tenant: String, name: String) {
        self.tenant = tenant
        self.name = name
    }

    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw MailrouteError.invalid(field: "configuration", reason: "\"\(text)\" must be written TENANT/NAME")
        }
        self.init(tenant: String(parts[0]), name: String(parts[1]))
    }

    public var description: String { "\(tenant)/\(name)" }
}

public struct VerificationResult: Sendable {
    public var config: String
    public var server: String
    public var error: DeliveryError?
    /// For `test`: the server's reply to the message (`250 2.0.0 Ok: queued as …`).
    public var finalReply: String?
    /// For `test`: the keys that signed the message (`acme.test/mr1 (rsa-sha256)`).
    public var signedWith: [String] = []

    public var succeeded: Bool { error == nil }
}
