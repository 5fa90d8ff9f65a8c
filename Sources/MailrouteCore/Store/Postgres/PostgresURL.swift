import Foundation

/// `[queue] url`: `postgres://user@host:port/database`, optionally `?sslmode=disable|prefer|require`.
/// The password never sits in the URL, which ends up in logs, `ps` and config backups.
public struct PostgresURL: Sendable, Equatable, CustomStringConvertible {
    public enum TLSMode: String, Sendable { case disable, prefer, require }

    public var user: String
    public var host: String
    public var port: Int
    public var database: String
    public var tls: TLSMode

    public init(_ text: String) throws {
        func bad(_ reason: String) -> ConfigFileError { ConfigFileError("[queue] url \(reason)") }
        guard !text.isEmpty else { throw bad("is required with backend = \"postgres\" (postgres://user@host:5432/database)") }
        guard let parts = URLComponents(string: text), let scheme = parts.scheme, ["postgres", "postgresql"].contains(scheme) else {
            throw bad("must look like postgres://user@host:5432/database")
        }
        if parts.password != nil {
            throw bad("must not hold the password: put it in [queue] password_file or the credential \(Self.credentialName)")
        }
        guard let user = parts.user, !user.isEmpty else { throw bad("names no user (postgres://user@host/database)") }
        guard let host = parts.host, !host.isEmpty else { throw bad("names no host") }
        let database = String(parts.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else { throw bad("names no database (…/database at the end)") }
        var tls = TLSMode.prefer
        for item in parts.queryItems ?? [] {
            guard item.name == "sslmode", let value = item.value, let mode = TLSMode(rawValue: value) else {
                throw bad("has an unknown parameter \(item.name); only sslmode=disable|prefer|require")
            }
            tls = mode
        }
        guard (1...65535).contains(parts.port ?? 5432) else { throw bad("has a port outside 1-65535") }
        self.user = user.removingPercentEncoding ?? user
        self.host = host
        self.port = parts.port ?? 5432
        self.database = database.removingPercentEncoding ?? database
        self.tls = tls
    }

    /// The systemd credential that holds the password (`LoadCredential=mailroute.pgpass:…`).
    public static let credentialName = "mailroute.pgpass"

    /// How logs name the database: never with a password, since the URL has none.
    public var description: String { "postgres://\(user)@\(host):\(port)/\(database)" }

    /// The password: the credential first, then `password_file`; nil when neither exists
    /// (trust or peer authentication).
    public static func password(file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        var paths: [String] = []
        if let dir = environment["CREDENTIALS_DIRECTORY"], !dir.isEmpty { paths.append("\(dir)/\(credentialName)") }
        if !file.isEmpty { paths.append(file) }
        for path in paths where FileManager.default.fileExists(atPath: path) {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigFileError("[queue] password_file \(path) cannot be read: \(MailrouteConfiguration.whyUnreadable(path))")
            }
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
        }
        if !file.isEmpty { throw ConfigFileError("[queue] password_file \(file) does not exist") }
        return nil
    }
}
