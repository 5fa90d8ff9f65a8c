import Foundation
import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// The queue in PostgreSQL, shared by every daemon, `mailroutectl` and enqueuer that points
/// at it (SPEC §8). The same contract as `QueueStore`; what several daemons add is here:
///
/// - **Claims** lock rows with `FOR UPDATE SKIP LOCKED`, so two daemons never take one row,
///   and stamp each with a claim token; an outcome is written only where the token is still
///   the row's. Leases are renewed while sends are in hand (`renewLeases`), and a lease that
///   runs out is taken back by whichever daemon claims next.
/// - **A configuration's connections are driven by one daemon at a time** (`config_owners`,
///   under a lease of `ownershipSeconds`): whoever claims its first row takes it, keeps it
///   while its pool has work, and gives it up once the pool has been idle and closed. Its
///   `max_connections` and `rate_per_minute` are then enforced by one engine, as on one host,
///   so its server never sees more; other daemons leave its rows alone (`ClaimPlan.foreign`).
/// - **Wake-ups** are LISTEN/NOTIFY (`PostgresWakeups`).
public final class PostgresStore: QueueBackend {
    let client: PostgresClient
    let url: PostgresURL
    let logger: Logger
    /// For the connection that LISTENs, which must stay out of the client's pool.
    let listenerConfiguration: PostgresConnection.Configuration
    /// This daemon (or command) in leases: host, process and a random part, so that a daemon
    /// restarted on the same host is not mistaken for its former self.
    let me: String
    private let routingCache = Mutex<(version: Int, table: RoutingTable)?>(nil)
    private let migrations = Mutex<[String]>([])

    /// How long a daemon holds a configuration's connections without renewing: a daemon that
    /// died gives its configurations up this long after its last renewal. Twice the rows'
    /// lease, at most 30 s: renewed every `min(5 s, lease_s / 3)`, and a daemon that cannot
    /// renew closes its connections after half of it (`Dispatcher.shareTheQueue`), with a
    /// quarter of it to close them, before another may take its configurations.
    public static func ownershipSeconds(lease: Double) -> Double { min(30, 2 * lease) }

    public var location: String { url.description }
    public var isShared: Bool { true }
    public var pacing: QueuePacing { .server }

    public init(_ settings: MailrouteConfiguration.Queue, logger: Logger, daemon: Bool = false) throws {
        url = try PostgresURL(settings.url)
        let password = try PostgresURL.password(file: settings.passwordFile)
        let tls: PostgresClient.Configuration.TLS
        let connectionTLS: PostgresConnection.Configuration.TLS
        switch url.tls {
        case .disable: (tls, connectionTLS) = (.disable, .disable)
        case .prefer:
            let config = TLSConfiguration.makeClientConfiguration()
            (tls, connectionTLS) = (.prefer(config), .prefer(try NIOSSLContext(configuration: config)))
        case .require:
            let config = TLSConfiguration.makeClientConfiguration()
            (tls, connectionTLS) = (.require(config), .require(try NIOSSLContext(configuration: config)))
        }
        var configuration = PostgresClient.Configuration(
            host: url.host, port: url.port, username: url.user, password: password, database: url.database, tls: tls)
        configuration.options.maximumConnections = settings.maxDatabaseConnections
        configuration.options.connectTimeout = .seconds(5)
        configuration.options.additionalStartupParameters = [("application_name", daemon ? "mailrouted" : "mailroutectl")]
        if daemon {
            // As SQLite's synchronous = NORMAL: a server crash may undo the daemon's last few
            // milliseconds of claims and outcomes, which at-least-once turns into a resend, never
            // a loss; the rows themselves are the enqueuers', committed with their own setting.
            configuration.options.additionalStartupParameters.append(("synchronous_commit", "off"))
        }
        client = PostgresClient(configuration: configuration, backgroundLogger: Logger(label: "mailroute.postgres", factory: { _ in SwiftLogNoOpLogHandler() }))
        listenerConfiguration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: password, database: url.database, tls: connectionTLS)
        self.logger = logger
        var random = SystemRandomNumberGenerator()
        me = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(String(random.next() as UInt32, radix: 16))"
    }

    /// The client's connections live here; cancelling it closes them.
    func runClient() async { await client.run() }

    /// Migrates, one program at a time (under an advisory lock).
    /// A connection that cannot be made is one line naming the database and why.
    func prepare() async throws {
        do {
            // A connection of its own, not the pool's: the pool retries a refused connection for
            // a minute, where a wrong URL or password must be one line now.
            let connection = try await PostgresConnection.connect(
                configuration: listenerConfiguration, id: 0, logger: Logger(label: "mailroute.migrate", factory: { _ in SwiftLogNoOpLogHandler() }))
            let applied: [String]
            do {
                applied = try await PostgresSchema.migrate(connection, location: self.location, logger: self.logger)
                try? await connection.close()
            } catch {
                try? await connection.close()
                throw error
            }
            migrations.withLock { $0 = applied }
        } catch let error as PSQLError {
            throw MailrouteError.invalid(field: "[queue] url \(url)", reason: Self.describe(error))
        }
    }

    public func shutdown() async {
        try? await client.query("DELETE FROM daemons WHERE daemon = \(me)", logger: logger)
        try? await client.query("DELETE FROM config_owners WHERE daemon = \(me)", logger: logger)
    }

    public func appliedMigrations() async throws -> [String] {
        try await client.withConnection { try await PostgresSchema.applied($0) }
    }

    /// One line for an operator: the server's own sentence (which names the column or rule),
    /// or what kept us from the server. Never the query or its binds, which may hold a body.
    public static func describe(_ error: PSQLError) -> String {
        if let info = error.serverInfo, let message = info[.message] {
            return message
        }
        switch error.code {
        case .connectionError:
            return "cannot connect: \(error.underlying.map { "\($0)" } ?? "connection refused")"
        case .serverClosedConnection, .uncleanShutdown:
            return "the server closed the connection"
        case .authMechanismRequiresPassword:
            return "the server asks for a password: set [queue] password_file (or the credential \(PostgresURL.credentialName))"
        case .sslUnsupported:
            return "the server does not offer TLS (sslmode=require)"
        default:
            return "PostgreSQL error \(error.code)"
        }
    }

    /// `client.withTransaction`, throwing what went wrong rather than the wrapper around it
    /// (a refused row's CHECK sentence, our own `MailrouteError`), within `deadline`.
    func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await Self.retryingConflicts { [client, logger] in
            do {
                return try await client.withTransaction(logger: logger) { db in try await body(db) }
            } catch let error as PostgresTransactionError {
                throw error.closureError ?? error.beginError ?? error.commitError ?? error.rollbackError ?? error
            }
        }
    }

    /// One statement, within `deadline`.
    @discardableResult
    func query(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        try await Self.retryingConflicts { [client, logger] in try await client.query(query, logger: logger) }
    }

    /// `bounded`, again (up to three times in all) when the server undid it for a deadlock or a
    /// serialization conflict: nothing of it was committed, and giving up would strand an
    /// outcome (its row stays `sending` until the lease runs out, then is sent twice).
    static func retryingConflicts<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        var tries = 0
        while true {
            do {
                return try await bounded(body)
            } catch let failure as Failure where ["40P01", "40001"].contains(failure.sqlState) && tries < 2 {
                tries += 1
                try await Task.sleep(for: .milliseconds(5 * tries))
            }
        }
    }

    /// The longest any one operation may take. While the server is away the client waits for a
    /// connection (up to a minute before it gives up on its own); the daemon's loop must not
    /// stall that long: its watchdog would restart it, and its leases would lapse meanwhile.
    /// (A variable for in-process tests only, whose cooperative threads other tests block for
    /// seconds at a time; the daemon never changes it.)
    nonisolated(unsafe) static var deadline = Duration.seconds(5)

    /// What went wrong, as `describe` says it: PSQLError's own description is a placeholder
    /// (it keeps the query and its binds out of logs), which told an operator nothing.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        /// The SQLSTATE, when the server answered (23514: a CHECK refused the row).
        public let sqlState: String?
        /// The column a CHECK or the schema's own RAISE named, if any.
        public let column: String?

        init(_ error: PSQLError) {
            description = PostgresStore.describe(error)
            sqlState = error.serverInfo?[.sqlState]
            column = error.serverInfo?[.columnName]
        }
    }

    struct Timeout: Error, CustomStringConvertible {
        var description: String { "PostgreSQL did not answer within \(PostgresStore.deadline)" }
    }

    /// Runs `body` and returns its result, or throws `Timeout` after `deadline`, whichever
    /// comes first. Not a task group: a group waits for its children, and a request the client
    /// does not give up on when cancelled (seen while the server was stopping) kept the daemon's
    /// loop waiting for minutes. So the work runs in a task of its own, is cancelled at the
    /// deadline, and is left to end by itself; the caller goes on.
    static func bounded<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let race = Race<T>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                race.start(
                    continuation,
                    work: Task {
                        do {
                            race.finish(.success(try await body()))
                        } catch let error as PSQLError {
                            race.finish(.failure(Failure(error)))
                        } catch {
                            race.finish(.failure(error))
                        }
                    },
                    timer: Task {
                        try await Task.sleep(for: deadline)
                        race.finish(.failure(Timeout()))
                    })
            }
        } onCancel: {
            race.finish(.failure(CancellationError()))
        }
    }

    /// The first of work, timer or cancellation to finish resumes the caller and cancels the others.
    final class Race<T: Sendable>: Sendable {
        private struct State {
            var continuation: CheckedContinuation<T, Error>?
            var outcome: Result<T, Error>?
            var tasks: [Task<Void, Error>] = []
        }
        private let state = Mutex(State())

        func start(_ continuation: CheckedContinuation<T, Error>, work: Task<Void, Error>, timer: Task<Void, Error>) {
            let early = state.withLock { state -> Result<T, Error>? in
                state.tasks = [work, timer]
                if let outcome = state.outcome { return outcome }
                state.continuation = continuation
                return nil
            }
            if let early {
                work.cancel()
                timer.cancel()
                continuation.resume(with: early)
            }
        }

        func finish(_ outcome: Result<T, Error>) {
            let (continuation, tasks) = state.withLock { state -> (CheckedContinuation<T, Error>?, [Task<Void, Error>]) in
                guard state.outcome == nil else { return (nil, []) }
                state.outcome = outcome
                defer { state.continuation = nil }
                return (state.continuation, state.tasks)
            }
            for task in tasks { task.cancel() }
            continuation?.resume(with: outcome)
        }
    }

    // MARK: - Reading rows

    /// Decodes a row's cells in order.
    struct Cells {
        let row: PostgresRandomAccessRow
        var index = 0
        init(_ row: PostgresRow) { self.row = row.makeRandomAccess() }
        mutating func next<T: PostgresDecodable>(_: T.Type = T.self) throws -> T {
            defer { index += 1 }
            return try row[index].decode(T.self)
        }
        mutating func value<T: RawRepresentable>(_: T.Type = T.self) throws -> T where T.RawValue == String {
            let raw: String = try next()
            guard let value = T(rawValue: raw) else { throw MailrouteError.invalid(field: "\(T.self)", reason: "unknown value \(raw) in the database") }
            return value
        }
        mutating func optionalValue<T: RawRepresentable>(_: T.Type = T.self) throws -> T? where T.RawValue == String {
            try (next() as String?).flatMap(T.init(rawValue:))
        }
    }

    static let configColumns = """
        id, tenant, name, host, port, security, username, password_sealed, from_address, from_name, reply_to, enabled,
        is_default, fallback, dkim, authorized_domains, authorized_senders, block_unauthorized, priority, max_connections,
        rate_per_minute, ca_file, status, error_kind, error_text, status_changed_at, settings_version, probe_failures,
        next_probe_at, created_at, updated_at
        """

    static func config(_ row: PostgresRow) throws -> SMTPConfigRecord {
        var c = Cells(row)
        let id: Int64 = try c.next()
        let tenant: String = try c.next(), name: String = try c.next(), host: String = try c.next()
        let port: Int = try c.next()
        let security: SMTPSecurity = try c.value()
        let username: String? = try c.next()
        let sealed: Data? = try c.next()
        var r = SMTPConfigRecord(tenant: tenant, name: name, host: host, fromAddress: try c.next())
        r.id = id
        r.port = port
        r.security = security
        r.username = username
        r.passwordSealed = sealed
        r.fromName = try c.next()
        r.replyTo = try c.next()
        r.enabled = try c.next()
        r.isDefault = try c.next()
        r.fallback = try c.value()
        r.dkim = try c.value()
        r.authorizedDomains = try c.next()
        r.authorizedSenders = try c.next()
        r.blockUnauthorized = try c.next()
        r.priority = try c.next()
        r.maxConnections = try c.next()
        r.ratePerMinute = try c.next()
        r.caFile = try c.next()
        r.status = try c.value()
        r.errorKind = try c.optionalValue()
        r.errorText = try c.next()
        r.statusChangedAt = try c.next()
        r.settingsVersion = try c.next()
        r.probeFailures = try c.next()
        r.nextProbeAt = try c.next()
        r.createdAt = try c.next()
        r.updatedAt = try c.next()
        return r
    }

    static let messageColumns = """
        id, tenant, advertiser, cname, category, priority, send_at, expires_at, mail_from, from_name, reply_to, rcpt_to,
        cc, bcc, subject, text_body, html_body, headers, idempotency_key, status, attempts, next_attempt_at, lease_until,
        config_id, route, last_error_kind, last_error, smtp_response, message_id_header, created_at, sent_at,
        effective_priority
        """

    /// A message row as `messageColumns` lists it; `claim_token` may follow.
    static func message(_ c: inout Cells) throws -> MessageRecord {
        let id: Int64 = try c.next()
        let tenant: String? = try c.next(), advertiser: String? = try c.next(), cname: String? = try c.next()
        let category: String = try c.next()
        let priority: Int? = try c.next()
        let sendAt: Double? = try c.next(), expiresAt: Double? = try c.next()
        let mailFrom: String? = try c.next(), fromName: String? = try c.next(), replyTo: String? = try c.next()
        let rcptTo: String = try c.next()
        let cc: String? = try c.next(), bcc: String? = try c.next()
        var m = MessageRecord(category: category, rcptTo: rcptTo, subject: try c.next())
        m.id = id
        m.tenant = tenant
        m.advertiser = advertiser
        m.cname = cname
        m.priority = priority
        m.sendAt = sendAt
        m.expiresAt = expiresAt
        m.mailFrom = mailFrom
        m.fromName = fromName
        m.replyTo = replyTo
        m.cc = cc
        m.bcc = bcc
        m.textBody = try c.next()
        m.htmlBody = try c.next()
        m.headers = try c.next()
        m.idempotencyKey = try c.next()
        m.status = try c.value()
        m.attempts = try c.next()
        m.nextAttemptAt = try c.next()
        m.leaseUntil = try c.next()
        m.configId = try c.next()
        m.route = try c.optionalValue()
        m.lastErrorKind = try c.next()
        m.lastError = try c.next()
        m.smtpResponse = try c.next()
        m.messageIdHeader = try c.next()
        m.createdAt = try c.next()
        m.sentAt = try c.next()
        m.effectivePriority = try c.next()
        return m
    }

    static func message(_ row: PostgresRow) throws -> MessageRecord {
        var c = Cells(row)
        return try message(&c)
    }

    static func route(_ row: PostgresRow) throws -> RouteRecord {
        var c = Cells(row)
        return RouteRecord(
            id: try c.next(), tenant: try c.next(), kind: try c.value(), key: try c.next(), configId: try c.next(),
            createdAt: try c.next())
    }

    static func attachment(_ row: PostgresRow) throws -> AttachmentRecord {
        var c = Cells(row)
        return AttachmentRecord(id: try c.next(), messageId: try c.next(), filename: try c.next(), contentType: try c.next(), content: try c.next())
    }

    static func attempt(_ row: PostgresRow) throws -> AttemptRecord {
        var c = Cells(row)
        return AttemptRecord(
            id: try c.next(), messageId: try c.next(), attempt: try c.next(), at: try c.next(), configId: try c.next(),
            configLabel: try c.next(), route: try c.optionalValue(), server: try c.next(), outcome: try c.value(),
            errorKind: try c.next(), smtpCode: try c.next(), enhancedCode: try c.next(), response: try c.next(),
            refusedRecipients: try c.next(), durationS: try c.next())
    }

    static func all<T>(_ rows: PostgresRowSequence, _ decode: (PostgresRow) throws -> T) async throws -> [T] {
        var result: [T] = []
        for try await row in rows { result.append(try decode(row)) }
        return result
    }

    static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }

    // MARK: - SMTP configurations

    public func configs(tenant: String?) async throws -> [SMTPConfigRecord] {
        let rows = try await query(
            "SELECT \(unescaped: Self.configColumns) FROM smtp_configs WHERE \(tenant)::text IS NULL OR tenant = \(tenant) ORDER BY tenant, name")
        return try await Self.all(rows, Self.config)
    }

    public func config(tenant: String, name: String) async throws -> SMTPConfigRecord? {
        try await client.withConnection { try await Self.config($0, tenant: tenant, name: name, logger: self.logger) }
    }

    static func config(_ db: PostgresConnection, tenant: String, name: String, lock: Bool = false, logger: Logger) async throws -> SMTPConfigRecord? {
        let rows = try await db.query(
            "SELECT \(unescaped: configColumns) FROM smtp_configs WHERE tenant = \(tenant) AND name = \(name) \(unescaped: lock ? "FOR UPDATE" : "")",
            logger: logger)
        return try await all(rows, config).first
    }

    static func existing(_ db: PostgresConnection, tenant: String, name: String, logger: Logger) async throws -> SMTPConfigRecord {
        guard let record = try await config(db, tenant: tenant, name: name, lock: true, logger: logger) else {
            throw MailrouteError.notFound("configuration \(tenant)/\(name)")
        }
        return record
    }

    public func config(id: Int64) async throws -> SMTPConfigRecord? {
        let rows = try await query("SELECT \(unescaped: Self.configColumns) FROM smtp_configs WHERE id = \(id)")
        return try await Self.all(rows, Self.config).first
    }

    public func sealedPasswordCount() async throws -> Int {
        let rows = try await query("SELECT count(*) FROM smtp_configs WHERE password_sealed IS NOT NULL")
        for try await row in rows { return try row.decode(Int.self) }
        return 0
    }

    public func insertConfig(_ new: SMTPConfigRecord) async throws -> SMTPConfigRecord {
        try await transaction { db in
            var r = new
            // Serializes additions for one tenant, so two concurrent first ones cannot both be default.
            try await db.query("SELECT pg_advisory_xact_lock(hashtext(\(r.tenant)))", logger: self.logger)
            if try await Self.config(db, tenant: r.tenant, name: r.name, logger: self.logger) != nil {
                throw MailrouteError.conflict("configuration \(r.label) already exists")
            }
            let defaults = try await db.query(
                "SELECT count(*) FROM smtp_configs WHERE tenant = \(r.tenant) AND is_default", logger: self.logger)
            var hasDefault = false
            for try await row in defaults { hasDefault = try row.decode(Int.self) > 0 }
            r.isDefault = !hasDefault && r.enabled
            r.status = .notVerified
            r.errorKind = nil
            r.errorText = nil
            r.settingsVersion = 1
            let now = QueueStore.now()
            r.createdAt = now
            r.updatedAt = now
            r.statusChangedAt = now
            let rows = try await db.query(
                """
                INSERT INTO smtp_configs (tenant, name, host, port, security, username, password_sealed, from_address, from_name,
                    reply_to, enabled, is_default, fallback, dkim, authorized_domains, authorized_senders, block_unauthorized,
                    priority, max_connections, rate_per_minute, ca_file, status, settings_version, status_changed_at, created_at,
                    updated_at)
                VALUES (\(r.tenant), \(r.name), \(r.host), \(r.port), \(r.security.rawValue), \(r.username), \(r.passwordSealed),
                    \(r.fromAddress), \(r.fromName), \(r.replyTo), \(r.enabled), \(r.isDefault), \(r.fallback.rawValue),
                    \(r.dkim.rawValue), \(r.authorizedDomains), \(r.authorizedSenders), \(r.blockUnauthorized), \(r.priority),
                    \(r.maxConnections), \(r.ratePerMinute), \(r.caFile), \(r.status.rawValue), \(r.settingsVersion),
                    \(r.statusChangedAt), \(r.createdAt), \(r.updatedAt))
                RETURNING id
                """, logger: self.logger)
            for try await row in rows { r.id = try row.decode(Int64.self) }
            return r
        }
    }

    public func updateConfig(_ edited: SMTPConfigRecord) async throws -> SMTPConfigRecord {
        try await transaction { db in
            guard let id = edited.id else { throw MailrouteError.notFound("configuration \(edited.label)") }
            let rows = try await db.query(
                "SELECT \(unescaped: Self.configColumns) FROM smtp_configs WHERE id = \(id) FOR UPDATE", logger: self.logger)
            guard let old = try await Self.all(rows, Self.config).first else {
                throw MailrouteError.notFound("configuration \(edited.label)")
            }
            var r = edited
            if r.name != old.name, try await Self.config(db, tenant: r.tenant, name: r.name, logger: self.logger) != nil {
                throw MailrouteError.conflict("configuration \(r.label) already exists")
            }
            r.isDefault = old.isDefault
            r.enabled = old.enabled
            if QueueStore.connectionSettingsDiffer(old, r) {
                r.settingsVersion = old.settingsVersion + 1
                r.status = .notVerified
                r.errorKind = nil
                r.errorText = nil
                r.statusChangedAt = QueueStore.now()
                r.nextProbeAt = nil
                r.probeFailures = 0
            } else {
                r.settingsVersion = old.settingsVersion
                r.status = old.status
                r.errorKind = old.errorKind
                r.errorText = old.errorText
                r.statusChangedAt = old.statusChangedAt
                r.nextProbeAt = old.nextProbeAt
                r.probeFailures = old.probeFailures
            }
            r.updatedAt = QueueStore.now()
            try await db.query(
                """
                UPDATE smtp_configs SET name = \(r.name), host = \(r.host), port = \(r.port), security = \(r.security.rawValue),
                    username = \(r.username), password_sealed = \(r.passwordSealed), from_address = \(r.fromAddress),
                    from_name = \(r.fromName), reply_to = \(r.replyTo), fallback = \(r.fallback.rawValue), dkim = \(r.dkim.rawValue),
                    authorized_domains = \(r.authorizedDomains), authorized_senders = \(r.authorizedSenders),
                    block_unauthorized = \(r.blockUnauthorized), priority = \(r.priority), max_connections = \(r.maxConnections),
                    rate_per_minute = \(r.ratePerMinute), ca_file = \(r.caFile), status = \(r.status.rawValue),
                    error_kind = \(r.errorKind?.rawValue), error_text = \(r.errorText), status_changed_at = \(r.statusChangedAt),
                    settings_version = \(r.settingsVersion), probe_failures = \(r.probeFailures), next_probe_at = \(r.nextProbeAt),
                    updated_at = \(r.updatedAt)
                WHERE id = \(id)
                """, logger: self.logger)
            return r
        }
    }

    public func deleteConfig(tenant: String, name: String) async throws -> Int {
        try await transaction { db in
            let record = try await Self.existing(db, tenant: tenant, name: name, logger: self.logger)
            if record.isDefault {
                var others = 0
                for try await row in try await db.query(
                    "SELECT count(*) FROM smtp_configs WHERE tenant = \(tenant) AND id <> \(record.id!)", logger: self.logger)
                {
                    others = try row.decode(Int.self)
                }
                if others > 0 {
                    throw MailrouteError.rule(
                        "\(record.label) is the default of tenant \(tenant), which has \(others) other configuration(s); "
                            + "make another one the default first (config set-default)")
                }
            }
            var routes = 0
            for try await row in try await db.query("SELECT count(*) FROM routes WHERE config_id = \(record.id!)", logger: self.logger) {
                routes = try row.decode(Int.self)
            }
            try await db.query("DELETE FROM smtp_configs WHERE id = \(record.id!)", logger: self.logger)
            return routes
        }
    }

    public func setDefault(tenant: String, name: String) async throws {
        try await transaction { db in
            let record = try await Self.existing(db, tenant: tenant, name: name, logger: self.logger)
            guard record.enabled else {
                throw MailrouteError.rule("\(record.label) is disabled; a disabled configuration cannot be the default")
            }
            let now = QueueStore.now()
            try await db.query(
                "UPDATE smtp_configs SET is_default = false, updated_at = \(now) WHERE tenant = \(tenant) AND is_default AND id <> \(record.id!)",
                logger: self.logger)
            try await db.query("UPDATE smtp_configs SET is_default = true, updated_at = \(now) WHERE id = \(record.id!)", logger: self.logger)
        }
    }

    public func setEnabled(tenant: String, name: String, enabled: Bool) async throws {
        try await transaction { db in
            let record = try await Self.existing(db, tenant: tenant, name: name, logger: self.logger)
            if !enabled && record.isDefault {
                throw MailrouteError.rule(
                    "\(record.label) is the default of tenant \(tenant) and the default cannot be disabled; "
                        + "make another configuration the default first (config set-default), or delete it")
            }
            try await db.query(
                "UPDATE smtp_configs SET enabled = \(enabled), updated_at = \(QueueStore.now()) WHERE id = \(record.id!)", logger: self.logger)
        }
    }

    public func recordConfigStatus(
        id: Int64, settingsVersion: Int, status: ConfigStatus, errorKind: ConfigErrorKind?, errorText: String?, firstProbeAt: Double?
    ) async throws -> Bool {
        let now = QueueStore.now()
        let rows = try await query(
            """
            WITH was AS (SELECT status FROM smtp_configs WHERE id = \(id) FOR UPDATE),
            changed AS (
            UPDATE smtp_configs
            SET status = \(status.rawValue), error_kind = \(errorKind?.rawValue), error_text = \(errorText),
                status_changed_at = CASE WHEN status = \(status.rawValue) AND error_kind IS NOT DISTINCT FROM \(errorKind?.rawValue)
                                         THEN status_changed_at ELSE \(now) END,
                next_probe_at = CASE WHEN \(status.rawValue) <> 'error' THEN NULL
                                     WHEN status = 'error' AND next_probe_at IS NOT NULL THEN next_probe_at
                                     ELSE \(firstProbeAt ?? now) END,
                probe_failures = CASE WHEN \(status.rawValue) = 'error' AND status = 'error' THEN probe_failures ELSE 0 END
            WHERE id = \(id) AND settings_version = \(settingsVersion)
              AND (status, error_kind, error_text) IS DISTINCT FROM (\(status.rawValue)::text, \(errorKind?.rawValue)::text, \(errorText)::text)
            RETURNING id),
            -- Back up: what waited for it (deferred until its next probe) goes now.
            released AS (
            UPDATE messages SET next_attempt_at = \(now)
            WHERE \(status.rawValue)::text = 'verified' AND (SELECT status FROM was) = 'error' AND EXISTS (SELECT 1 FROM changed)
              AND status = 'deferred' AND config_id = \(id) AND next_attempt_at > \(now))
            SELECT id FROM changed
            """)
        var changed = false
        for try await _ in rows { changed = true }
        return changed
    }

    public func recordProbeFailure(id: Int64, settingsVersion: Int, nextProbeAt: Double, errorText: String) async throws {
        try await query(
            """
            UPDATE smtp_configs SET probe_failures = probe_failures + 1, next_probe_at = \(nextProbeAt), error_text = \(errorText)
            WHERE id = \(id) AND settings_version = \(settingsVersion) AND status = 'error'
            """)
    }

    public func claimProbe(id: Int64, settingsVersion: Int, now: Double, until: Double) async throws -> Bool {
        let rows = try await query(
            """
            UPDATE smtp_configs SET next_probe_at = \(until)
            WHERE id = \(id) AND settings_version = \(settingsVersion) AND status = 'error'
              AND (next_probe_at IS NULL OR next_probe_at <= \(now))
            RETURNING id
            """)
        var won = false
        for try await _ in rows { won = true }
        return won
    }

    // MARK: - Routes

    public func setRoute(tenant: String, kind: RouteKind, key: String, configName: String) async throws -> RouteRecord {
        try await transaction { db in
            let config = try await Self.existing(db, tenant: tenant, name: configName, logger: self.logger)
            let rows = try await db.query(
                """
                INSERT INTO routes (tenant, kind, key, config_id, created_at) VALUES (\(tenant), \(kind.rawValue), \(key), \(config.id!), \(QueueStore.now()))
                ON CONFLICT (tenant, kind, key) DO UPDATE SET config_id = excluded.config_id
                RETURNING id, tenant, kind, key, config_id, created_at
                """, logger: self.logger)
            guard let route = try await Self.all(rows, Self.route).first else { throw MailrouteError.notFound("route") }
            return route
        }
    }

    public func removeRoute(tenant: String, kind: RouteKind, key: String) async throws {
        let rows = try await query(
            "DELETE FROM routes WHERE tenant = \(tenant) AND kind = \(kind.rawValue) AND key = \(key) RETURNING id")
        var removed = false
        for try await _ in rows { removed = true }
        if !removed { throw MailrouteError.notFound("route \(tenant) \(kind.rawValue) \(key)") }
    }

    public func routes(tenant: String?) async throws -> [RouteRecord] {
        let rows = try await query(
            "SELECT id, tenant, kind, key, config_id, created_at FROM routes WHERE \(tenant)::text IS NULL OR tenant = \(tenant) ORDER BY tenant, kind, key")
        return try await Self.all(rows, Self.route)
    }

    public func routingTable(tenant: String?) async throws -> RoutingTable {
        try await transaction { db in
            // One snapshot for both tables, so configurations and routes agree.
            try await db.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            let configs = try await Self.all(
                try await db.query(
                    "SELECT \(unescaped: Self.configColumns) FROM smtp_configs WHERE \(tenant)::text IS NULL OR tenant = \(tenant)", logger: self.logger),
                Self.config)
            let routes = try await Self.all(
                try await db.query(
                    "SELECT id, tenant, kind, key, config_id, created_at FROM routes WHERE \(tenant)::text IS NULL OR tenant = \(tenant)",
                    logger: self.logger),
                Self.route)
            return RoutingTable(configs: configs, routes: routes)
        }
    }

    /// Every configuration and route as committed, re-read only when `routing_version` moved.
    func routing(_ db: PostgresConnection) async throws -> RoutingTable {
        var version = 0
        for try await row in try await db.query("SELECT version FROM routing_version", logger: logger) {
            version = try row.decode(Int.self)
        }
        if let cached = routingCache.withLock({ $0 }), cached.version == version { return cached.table }
        let configs = try await Self.all(
            try await db.query("SELECT \(unescaped: Self.configColumns) FROM smtp_configs", logger: logger), Self.config)
        let routes = try await Self.all(
            try await db.query("SELECT id, tenant, kind, key, config_id, created_at FROM routes", logger: logger), Self.route)
        let table = RoutingTable(configs: configs, routes: routes)
        routingCache.withLock { $0 = (version, table) }
        return table
    }

    public func currentRouting() async throws -> RoutingTable {
        try await transaction { db in
            try await db.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", logger: self.logger)
            return try await self.routing(db)
        }
    }
}
