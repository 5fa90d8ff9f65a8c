import Foundation
import GRDB
import Logging
import Synchronization

/// The only type that speaks SQL. Both programs open the database through it, which
/// runs the migrations, so either may be started first.
public final class QueueStore: QueueBackend {
    public let pool: DatabasePool
    public let path: String
    /// The routing tables as of `routing_version`, re-read only when a commit changed them.
    private let routingCache = Mutex<(version: Int, table: RoutingTable)?>(nil)

    public init(path: String, logger: Logger = Logger(label: "mailroute.queue")) throws {
        self.path = path
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        // As the package makes /var/lib/mailroute: the daemon and its group, whatever the umask
        // (under umask 000 anyone could otherwise replace the database beside its readers).
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o770])
        try DatabaseFiles.checkAccess(path)
        try Self.createDatabaseFile(path, in: directory)
        try DatabaseFiles.closeToOthers(path)
        var configuration = Configuration()
        let locks = LockWatch(logger: logger)
        // Enqueuers and the CLI write the same file; wait for their short transactions, up to 10 s.
        configuration.busyMode = .callback { retries in locks.busy(retries: retries) }
        configuration.foreignKeysEnabled = true
        configuration.prepareDatabase { db in
            // In WAL mode NORMAL survives a crash of any process; a power cut can at most undo
            // the last commits, which at-least-once delivery turns into a resend, not a loss.
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
            // Only the writer waits for another process's lock (WAL readers never do): the first
            // statement it finishes after a wait that was logged ends the wait.
            if !db.configuration.readonly {
                db.trace(options: .profile) { _ in locks.statementFinished() }
            }
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try pool.read { db in try Self.refuseNewerSchema(db, location: path) }
        try Migrations.migrator.migrate(pool)
    }

    /// GRDB's migrator runs what it knows and ignores what it does not; a migration it does
    /// not know was applied by a newer mailroute, whose rows this one could misread or break.
    static func refuseNewerSchema(_ db: Database, location: String) throws {
        let migrator = Migrations.migrator
        let known = Set(migrator.migrations)
        guard let newer = try migrator.appliedIdentifiers(db).filter({ !known.contains($0) }).max() else { return }
        throw MailrouteError.schemaNewer(location: location, database: newer, binary: migrator.migrations.last ?? "none")
    }

    /// The database file is made here rather than by SQLite, so that its mode and owner are
    /// right whoever opens it first: 0660 (the daemon and the enqueuers of its group write it,
    /// nobody else reads it), and, when root makes it (`sudo mailroutectl …` before the daemon
    /// ever ran), owned by the state directory's owner rather than by root, which would lock
    /// the daemon out. SQLite gives the WAL and shared-memory files the same mode and owner.
    static func createDatabaseFile(_ path: String, in directory: String) throws {
        let fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o660)
        guard fd >= 0 else {
            if errno == EEXIST { return }
            throw MailrouteError.invalid(field: "[queue] path", reason: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        fchmod(fd, 0o660)  // past a umask of 022
        var owner = stat()
        if geteuid() == 0, stat(directory, &owner) == 0, owner.st_uid != 0 {
            fchown(fd, owner.st_uid, owner.st_gid)
        }
    }

    public var location: String { path }
    /// One daemon per database file (SQLite's locks do not reach across hosts).
    public var isShared: Bool { false }
    public var pacing: QueuePacing { .local }
    public func shutdown() async {}

    /// Names of the migrations applied, oldest first.
    public func appliedMigrations() throws -> [String] {
        try pool.read { db in try Migrations.migrator.appliedMigrations(db) }
    }

    public static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: - SMTP configurations

    public func configs(tenant: String? = nil) throws -> [SMTPConfigRecord] {
        try pool.read { db in
            var request = SMTPConfigRecord.order(SMTPConfigRecord.Columns.tenant, SMTPConfigRecord.Columns.name)
            if let tenant { request = request.filter(SMTPConfigRecord.Columns.tenant == tenant) }
            return try request.fetchAll(db)
        }
    }

    public func config(tenant: String, name: String) throws -> SMTPConfigRecord? {
        try pool.read { db in try Self.config(db, tenant: tenant, name: name) }
    }

    /// Configurations whose password is sealed with the key: what a new key would orphan.
    public func sealedPasswordCount() throws -> Int {
        try pool.read { db in try SMTPConfigRecord.filter(SMTPConfigRecord.Columns.passwordSealed != nil).fetchCount(db) }
    }

    public func config(id: Int64) throws -> SMTPConfigRecord? {
        try pool.read { db in try SMTPConfigRecord.fetchOne(db, key: id) }
    }

    static func config(_ db: Database, tenant: String, name: String) throws -> SMTPConfigRecord? {
        try SMTPConfigRecord
            .filter(SMTPConfigRecord.Columns.tenant == tenant && SMTPConfigRecord.Columns.name == name)
            .fetchOne(db)
    }

    static func existing(_ db: Database, tenant: String, name: String) throws -> SMTPConfigRecord {
        guard let record = try config(db, tenant: tenant, name: name) else {
            throw MailrouteError.notFound("configuration \(tenant)/\(name)")
        }
        return record
    }

    /// Inserts a new configuration; the tenant's first becomes its default.
    public func insertConfig(_ new: SMTPConfigRecord) throws -> SMTPConfigRecord {
        try pool.write { db in
            var record = new
            if try Self.config(db, tenant: record.tenant, name: record.name) != nil {
                throw MailrouteError.conflict("configuration \(record.label) already exists")
            }
            let hasDefault = try SMTPConfigRecord
                .filter(SMTPConfigRecord.Columns.tenant == record.tenant && SMTPConfigRecord.Columns.isDefault == true)
                .fetchCount(db) > 0
            record.isDefault = !hasDefault && record.enabled
            record.status = .notVerified
            record.errorKind = nil
            record.errorText = nil
            record.settingsVersion = 1
            let now = Self.now()
            record.createdAt = now
            record.updatedAt = now
            record.statusChangedAt = now
            try record.insert(db)
            return record
        }
    }

    /// Saves an edited configuration. A change of anything that decides how we connect or
    /// log in resets the status, because the old verification no longer says anything.
    public func updateConfig(_ edited: SMTPConfigRecord) throws -> SMTPConfigRecord {
        try pool.write { db in
            guard let id = edited.id, let old = try SMTPConfigRecord.fetchOne(db, key: id) else {
                throw MailrouteError.notFound("configuration \(edited.label)")
            }
            var record = edited
            if record.name != old.name, try Self.config(db, tenant: record.tenant, name: record.name) != nil {
                throw MailrouteError.conflict("configuration \(record.label) already exists")
            }
            record.isDefault = old.isDefault
            record.enabled = old.enabled
            if Self.connectionSettingsDiffer(old, record) {
                record.settingsVersion = old.settingsVersion + 1
                record.status = .notVerified
                record.errorKind = nil
                record.errorText = nil
                record.statusChangedAt = Self.now()
            } else {
                record.settingsVersion = old.settingsVersion
                record.status = old.status
                record.errorKind = old.errorKind
                record.errorText = old.errorText
                record.statusChangedAt = old.statusChangedAt
            }
            record.updatedAt = Self.now()
            try record.update(db)
            return record
        }
    }

    static func connectionSettingsDiffer(_ a: SMTPConfigRecord, _ b: SMTPConfigRecord) -> Bool {
        a.host != b.host || a.port != b.port || a.security != b.security || a.username != b.username
            || a.passwordSealed != b.passwordSealed || a.caFile != b.caFile || a.fromAddress != b.fromAddress
    }

    /// Deletes a configuration and, through the foreign key, its routes. Returns how many routes went.
    @discardableResult
    public func deleteConfig(tenant: String, name: String) throws -> Int {
        try pool.write { db in
            let record = try Self.existing(db, tenant: tenant, name: name)
            if record.isDefault {
                let others = try SMTPConfigRecord.filter(SMTPConfigRecord.Columns.tenant == tenant).fetchCount(db) - 1
                if others > 0 {
                    throw MailrouteError.rule(
                        "\(record.label) is the default of tenant \(tenant), which has \(others) other configuration(s); "
                            + "make another one the default first (config set-default)")
                }
            }
            let routes = try RouteRecord.filter(RouteRecord.Columns.configId == record.id).fetchCount(db)
            try record.delete(db)
            return routes
        }
    }

    public func setDefault(tenant: String, name: String) throws {
        try pool.write { db in
            let record = try Self.existing(db, tenant: tenant, name: name)
            guard record.enabled else {
                throw MailrouteError.rule("\(record.label) is disabled; a disabled configuration cannot be the default")
            }
            try db.execute(
                sql: "UPDATE smtp_configs SET is_default = 0, updated_at = ? WHERE tenant = ? AND is_default = 1 AND id <> ?",
                arguments: [Self.now(), tenant, record.id])
            try db.execute(
                sql: "UPDATE smtp_configs SET is_default = 1, updated_at = ? WHERE id = ?",
                arguments: [Self.now(), record.id])
        }
    }

    public func setEnabled(tenant: String, name: String, enabled: Bool) throws {
        try pool.write { db in
            let record = try Self.existing(db, tenant: tenant, name: name)
            if !enabled && record.isDefault {
                throw MailrouteError.rule(
                    "\(record.label) is the default of tenant \(tenant) and the default cannot be disabled; "
                        + "make another configuration the default first (config set-default), or delete it")
            }
            try db.execute(
                sql: "UPDATE smtp_configs SET enabled = ?, updated_at = ? WHERE id = ?",
                arguments: [enabled, Self.now(), record.id])
        }
    }

    /// Records a verification's or delivery's verdict on a configuration, unless its connection
    /// settings changed meanwhile (the result is about settings that no longer exist). Going
    /// into `error` schedules the first probe at `firstProbeAt`; staying in error keeps the
    /// schedule; leaving it clears the schedule. Returns whether the row changed (the same
    /// verdict again changes nothing: every delivery that finds a configuration verified says so).
    @discardableResult
    public func recordConfigStatus(
        id: Int64, settingsVersion: Int, status: ConfigStatus, errorKind: ConfigErrorKind?, errorText: String?,
        firstProbeAt: Double? = nil
    ) async throws -> Bool {
        try await pool.write { db in
            try Self.recordConfigStatus(
                db, id: id, settingsVersion: settingsVersion, status: status, errorKind: errorKind, errorText: errorText,
                firstProbeAt: firstProbeAt)
        }
    }

    static func recordConfigStatus(
        _ db: Database, id: Int64, settingsVersion: Int, status: ConfigStatus, errorKind: ConfigErrorKind?, errorText: String?,
        firstProbeAt: Double?
    ) throws -> Bool {
        let now = now()
        let was = try String.fetchOne(db, sql: "SELECT status FROM smtp_configs WHERE id = ?", arguments: [id])
        try db.execute(
            sql: """
                UPDATE smtp_configs
                SET status = :status, error_kind = :kind, error_text = :text,
                    status_changed_at = CASE WHEN status = :status AND error_kind IS :kind
                                             THEN status_changed_at ELSE :now END,
                    next_probe_at = CASE WHEN :status <> 'error' THEN NULL
                                         WHEN status = 'error' AND next_probe_at IS NOT NULL THEN next_probe_at
                                         ELSE :probe END,
                    probe_failures = CASE WHEN :status = 'error' AND status = 'error' THEN probe_failures ELSE 0 END
                WHERE id = :id AND settings_version = :version
                  AND NOT (status = :status AND error_kind IS :kind AND error_text IS :text)
                """,
            arguments: [
                "status": status.rawValue, "kind": errorKind?.rawValue, "text": errorText,
                "now": now, "probe": firstProbeAt ?? now, "id": id, "version": settingsVersion,
            ])
        let changed = db.changesCount > 0
        if changed, was == ConfigStatus.error.rawValue, status == .verified {
            // Back up: what waited for it (deferred until its next probe) goes now.
            try db.execute(
                sql: "UPDATE messages SET next_attempt_at = ? WHERE status = 'deferred' AND config_id = ? AND next_attempt_at > ?",
                arguments: [now, id, now])
        }
        return changed
    }

    /// A probe of a configuration that is down failed: it stays down until `nextProbeAt`.
    public func recordProbeFailure(id: Int64, settingsVersion: Int, nextProbeAt: Double, errorText: String) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE smtp_configs SET probe_failures = probe_failures + 1, next_probe_at = ?, error_text = ?
                    WHERE id = ? AND settings_version = ? AND status = 'error'
                    """, arguments: [nextProbeAt, errorText, id, settingsVersion])
        }
    }

    public func claimProbe(id: Int64, settingsVersion: Int, now: Double, until: Double) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE smtp_configs SET next_probe_at = ?
                    WHERE id = ? AND settings_version = ? AND status = 'error' AND (next_probe_at IS NULL OR next_probe_at <= ?)
                    """, arguments: [until, id, settingsVersion, now])
            return db.changesCount > 0
        }
    }

    // MARK: - Routes

    /// Creates or moves the route for (tenant, kind, key).
    public func setRoute(tenant: String, kind: RouteKind, key: String, configName: String) throws -> RouteRecord {
        try pool.write { db in
            let config = try Self.existing(db, tenant: tenant, name: configName)
            try db.execute(
                sql: """
                    INSERT INTO routes (tenant, kind, key, config_id, created_at) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (tenant, kind, key) DO UPDATE SET config_id = excluded.config_id
                    """,
                arguments: [tenant, kind.rawValue, key, config.id, Self.now()])
            return try RouteRecord
                .filter(RouteRecord.Columns.tenant == tenant && RouteRecord.Columns.kind == kind.rawValue
                    && RouteRecord.Columns.key == key)
                .fetchOne(db)!
        }
    }

    public func removeRoute(tenant: String, kind: RouteKind, key: String) throws {
        try pool.write { db in
            try db.execute(
                sql: "DELETE FROM routes WHERE tenant = ? AND kind = ? AND key = ?",
                arguments: [tenant, kind.rawValue, key])
            if db.changesCount == 0 {
                throw MailrouteError.notFound("route \(tenant) \(kind.rawValue) \(key)")
            }
        }
    }

    public func routes(tenant: String? = nil) throws -> [RouteRecord] {
        try pool.read { db in
            var request = RouteRecord.order(RouteRecord.Columns.tenant, RouteRecord.Columns.kind, RouteRecord.Columns.key)
            if let tenant { request = request.filter(RouteRecord.Columns.tenant == tenant) }
            return try request.fetchAll(db)
        }
    }

    /// Everything routing needs, read in one transaction so configurations and routes agree.
    /// Every configuration and route as committed, from the cache when nothing changed.
    func routing(_ db: Database) throws -> RoutingTable {
        let version = try Int.fetchOne(db, sql: "SELECT version FROM routing_version") ?? 0
        if let cached = routingCache.withLock({ $0 }), cached.version == version { return cached.table }
        let table = RoutingTable(configs: try SMTPConfigRecord.fetchAll(db), routes: try RouteRecord.fetchAll(db))
        routingCache.withLock { $0 = (version, table) }
        return table
    }

    /// The daemon's view of the routing: cheap when nothing changed.
    public func currentRouting() async throws -> RoutingTable {
        try await pool.read { db in try self.routing(db) }
    }

    public func routingTable(tenant: String? = nil) throws -> RoutingTable {
        try pool.read { db in
            var configs = SMTPConfigRecord.all()
            var routes = RouteRecord.all()
            if let tenant {
                configs = configs.filter(SMTPConfigRecord.Columns.tenant == tenant)
                routes = routes.filter(RouteRecord.Columns.tenant == tenant)
            }
            return RoutingTable(configs: try configs.fetchAll(db), routes: try routes.fetchAll(db))
        }
    }
}
