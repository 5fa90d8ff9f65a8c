import Foundation
import TOMLKit

/// A problem in the config file, naming the key (as `section.key`) that is wrong.
public struct ConfigFileError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension MailrouteConfiguration {
    /// Reads a TOML file. Relative paths inside it are taken relative to the file's own folder,
    /// so `mailroutectl --config etc/x.toml` works from anywhere.
    public init(contentsOfFile given: String) throws {
        let path = Self.absolutePath(given)
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            // A relative MAILROUTE_CONFIG follows the shell's current directory, which a `cd` changes.
            let hint = given.hasPrefix("/") ? "" : " (\(given) is relative to the current directory; use an absolute path)"
            throw ConfigFileError("cannot read config file \(path): \(Self.whyUnreadable(path))\(hint)")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        do {
            try self.init(toml: text, baseDirectory: base)
        } catch let error as ConfigFileError {
            throw ConfigFileError("\(path): \(error.description)")
        }
    }

    /// What an operator needs to fix an unreadable file: which user tried, and the file's owner and mode.
    static func whyUnreadable(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { return String(cString: strerror(errno)) }
        let user = getpwuid(geteuid()).map { String(cString: $0.pointee.pw_name) } ?? "uid \(geteuid())"
        let owner = getpwuid(info.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "\(info.st_uid)"
        let group = getgrgid(info.st_gid).map { String(cString: $0.pointee.gr_name) } ?? "\(info.st_gid)"
        let mode = String(info.st_mode & 0o777, radix: 8)
        if (info.st_mode & S_IFMT) == S_IFDIR { return "it is a directory" }
        if access(path, R_OK) == 0 { return "it is not UTF-8 text" }
        return "permission denied for user \(user); the file is \(owner):\(group) mode \(mode) "
            + "(the daemon's user must be able to read it, e.g. root:mailroute 0640)"
    }

    /// The config file's path as the programs keep it: absolute, so a reload after the
    /// working directory changed reads the same file.
    public static func absolutePath(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }

    /// Every key the file may hold is read here, and nowhere else.
    public init(toml: String, baseDirectory: String) throws {
        self.init()
        if let problem = Self.lexicalProblem(toml) { throw ConfigFileError(problem) }
        let root: TOMLTable
        do {
            root = try TOMLTable(string: toml)
        } catch let error as TOMLParseError {
            throw ConfigFileError("invalid TOML at line \(error.source.begin.line): \(error.description)")
        }
        var file = TableReader(root, path: "")
        let paths = PathResolver(base: baseDirectory)

        if var t = try file.table("queue") {
            try t.read("backend", into: &queue.backend, oneOf)
            try t.read("path", into: &queue.path, paths.resolve)
            try t.read("url", into: &queue.url)
            try t.read("password_file", into: &queue.passwordFile, paths.resolve)
            try t.read("max_db_connections", into: &queue.maxDatabaseConnections, within(1...100))
            try t.read("poll_interval_s", into: &queue.pollIntervalSeconds, positive)
            try t.read("lease_s", into: &queue.leaseSeconds, positive)
            try t.read("retention_days", into: &queue.retentionDays, atLeast(0))
            try t.finish()
            if queue.backend == .postgres {
                // Parsed here so a typo stops the program at start, naming the key.
                _ = try PostgresURL(queue.url)
            }
        }
        if var t = try file.table("delivery") {
            try t.read("helo_name", into: &delivery.heloName)
            try t.read("connect_timeout_s", into: &delivery.connectTimeoutSeconds, positive)
            try t.read("command_timeout_s", into: &delivery.commandTimeoutSeconds, positive)
            try t.read("default_max_connections", into: &delivery.defaultMaxConnections, within(1...100))
            try t.read("idle_timeout_s", into: &delivery.idleTimeoutSeconds, positive)
            try t.read("max_messages_per_connection", into: &delivery.maxMessagesPerConnection, atLeast(1))
            try t.read("retry_initial_s", into: &delivery.retryInitialSeconds, positive)
            try t.read("retry_max_s", into: &delivery.retryMaxSeconds, positive)
            try t.read("max_attempts", into: &delivery.maxAttempts, atLeast(1))
            try t.read("cooldown_s", into: &delivery.cooldownSeconds, positive)
            try t.read("breaker_timeouts", into: &delivery.breakerTimeouts, atLeast(1))
            try t.read("max_queue_lifetime_s", into: &delivery.maxQueueLifetimeSeconds, positive)
            var allowed = delivery.allowedNetworks.map(\.description)
            try t.read("allowed_networks", into: &allowed)
            delivery.allowedNetworks = try networks(allowed, "delivery.allowed_networks")
            try t.finish()
            if delivery.retryMaxSeconds < delivery.retryInitialSeconds {
                throw ConfigFileError("delivery.retry_max_s must not be less than delivery.retry_initial_s")
            }
        }
        if var t = try file.table("platform") {
            try t.read("host", into: &platform.host, nonEmpty)
            try t.read("port", into: &platform.port, within(1...65535))
            try t.read("security", into: &platform.security, oneOf)
            try t.read("username", into: &platform.username)
            try t.read("password_file", into: &platform.passwordFile, paths.resolve)
            try t.read("from_address", into: &platform.fromAddress, emailAddress)
            try t.read("from_name", into: &platform.fromName)
            try t.read("ca_file", into: &platform.caFile, paths.resolve)
            try t.finish()
        }
        if var cats = try file.table("categories") {
            for name in cats.keys {
                guard Category.isValidName(name) else {
                    throw ConfigFileError("categories.\(name): a category name is 1-64 of [a-z0-9_.-]")
                }
                guard var t = try cats.table(name) else { continue }
                var category = categories[name] ?? .other
                try t.read("priority", into: &category.priority, within(1...5))
                var ttl = category.ttlSeconds ?? 0
                try t.read("ttl_s", into: &ttl, atLeast(0))
                category.ttlSeconds = ttl > 0 ? ttl : nil
                try t.finish()
                categories[name] = category
            }
            try cats.finish()
        }
        if var t = try file.table("secrets") {
            try t.read("key_file", into: &secrets.keyFile, paths.resolve)
            try t.finish()
        }
        if var t = try file.table("dkim") {
            try t.read("keys_dir", into: &dkim.keysDirectory, paths.resolve)
            try t.finish()
        }
        if var t = try file.table("api") {
            var listen = ""
            try t.read("listen", into: &listen)
            api.listen = try Self.listen(listen, key: "api.listen", paths: paths)
            try t.read("token_file", into: &api.tokenFile, paths.resolve)
            try t.read("metrics_auth", into: &api.metricsAuth)
            try t.read("max_body_bytes", into: &api.maxBodyBytes, within(1024...1024 * 1024 * 1024))
            try t.finish()
        }
        if var t = try file.table("log") {
            try t.read("level", into: &log.level, oneOf)
            try t.read("target", into: &log.target, oneOf)
            try t.finish()
        }
        try file.finish()
    }
}

extension MailrouteConfiguration {
    /// What toml++ must never be handed: it asserts (aborting the program; in a release build
    /// the assertion is an optimizer assumption) on some characters where a key should start,
    /// such as a form feed, "=" or a line end after the "[" of a table header (its parse_key
    /// checks the first character only by assertion). None of them is valid TOML anyway: raw
    /// control characters but tab (C1 and U+2028/U+2029 included) are refused everywhere,
    /// anything but ASCII outside strings and comments, and a table header that does not start
    /// with a key. Nil when the text may go to the parser.
    static func lexicalProblem(_ toml: String) -> String? {
        enum State { case normal, comment, basic, literal, multilineBasic, multilineLiteral }
        let s = Array(toml.unicodeScalars)
        func at(_ i: Int) -> Unicode.Scalar? { i < s.count ? s[i] : nil }
        func hex(_ c: Unicode.Scalar) -> String { "U+" + String(format: "%04X", c.value) }
        func isKeyStart(_ c: Unicode.Scalar?) -> Bool {
            guard let c else { return true }  // the end: the parser reports it
            return c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || "_-\"']".unicodeScalars.contains(c))
        }
        var state = State.normal
        var line = 1
        // Brackets open outside strings: a "[" at the start of a line is a table header only at 0.
        var depth = 0
        var lineStart = true
        var i = s.first == "\u{FEFF}" ? 1 : 0  // a byte order mark, as Windows editors write, is fine
        while i < s.count {
            let c = s[i]
            if c == "\r" {
                guard at(i + 1) == "\n" else { return "invalid TOML at line \(line): a carriage return must be followed by a line feed" }
                i += 1
                continue
            }
            if c == "\n" {
                line += 1
                lineStart = true
                // A single-line string or a comment ends here (an unterminated string is the parser's to report).
                if state == .comment || state == .basic || state == .literal { state = .normal }
                i += 1
                continue
            }
            if (c.value < 0x20 && c != "\t") || (0x7F...0x9F).contains(c.value) || c == "\u{2028}" || c == "\u{2029}" {
                return "invalid TOML at line \(line): control character \(hex(c)) (write it as an escape in a string)"
            }
            switch state {
            case .normal:
                if c == "[" && lineStart && depth == 0 {
                    var j = i + 1
                    while at(j) == " " || at(j) == "\t" { j += 1 }
                    if at(j) == "[" && j == i + 1 {
                        j += 1
                        while at(j) == " " || at(j) == "\t" { j += 1 }
                    }
                    guard isKeyStart(at(j)) else { return "invalid TOML at line \(line): a table name must follow \"[\"" }
                }
                if c == "[" || c == "{" { depth += 1 }
                if c == "]" || c == "}" { depth = max(0, depth - 1) }
                if c != " " && c != "\t" { lineStart = false }
                if c == "#" {
                    state = .comment
                } else if c == "\"" {
                    if at(i + 1) == "\"", at(i + 2) == "\"" { state = .multilineBasic; i += 3; continue }
                    state = .basic
                } else if c == "'" {
                    if at(i + 1) == "'", at(i + 2) == "'" { state = .multilineLiteral; i += 3; continue }
                    state = .literal
                } else if c.value >= 0x80 {
                    return "invalid TOML at line \(line): \(hex(c)) outside a string or comment (keys are ASCII; quote the value)"
                }
            case .comment:
                break
            case .basic, .multilineBasic:
                if c == "\\" {
                    i += at(i + 1) == "\n" || at(i + 1) == "\r" ? 1 : 2  // a line-ending backslash: the newline is counted above
                    continue
                }
                if state == .basic, c == "\"" { state = .normal }
                if state == .multilineBasic, c == "\"", at(i + 1) == "\"", at(i + 2) == "\"" { state = .normal; i += 3; continue }
            case .literal:
                if c == "'" { state = .normal }
            case .multilineLiteral:
                if c == "'", at(i + 1) == "'", at(i + 2) == "'" { state = .normal; i += 3; continue }
            }
            i += 1
        }
        return nil
    }
}

extension MailrouteConfiguration.Category {
    public static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { c in
                (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || c == 0x2E || c == 0x2D
            }
    }
}

// MARK: - Reading helpers

/// Reads keys out of one TOML table and remembers which it saw, so that `finish()`
/// can name the first key nobody asked for.
private struct TableReader {
    let table: TOMLTable
    let path: String
    private var seen: Set<String> = []

    init(_ table: TOMLTable, path: String) {
        self.table = table
        self.path = path
    }

    var keys: [String] { table.keys.sorted() }

    func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func table(_ key: String) throws -> TableReader? {
        seen.insert(key)
        guard let value = table[key] else { return nil }
        guard let sub = value.table else {
            throw ConfigFileError("\(name(key)) must be a table ([\(name(key))])")
        }
        return TableReader(sub, path: name(key))
    }

    mutating func read<T: TOMLReadable>(
        _ key: String, into target: inout T, _ check: (T, String) throws -> T = { v, _ in v }
    ) throws {
        seen.insert(key)
        guard let value = table[key] else { return }
        guard let typed = T.read(value) else {
            throw ConfigFileError("\(name(key)) must be \(T.tomlDescription)")
        }
        target = try check(typed, name(key))
    }

    mutating func read<T: RawRepresentable & CaseIterable>(
        _ key: String, into target: inout T, _ check: (String, String, [String]) throws -> T
    ) throws where T.RawValue == String {
        seen.insert(key)
        guard let value = table[key] else { return }
        guard let text = value.string else {
            throw ConfigFileError("\(name(key)) must be a string")
        }
        target = try check(text, name(key), T.allCases.map(\.rawValue))
    }

    func finish() throws {
        if let unknown = table.keys.sorted().first(where: { !seen.contains($0) }) {
            throw ConfigFileError("unknown key \(name(unknown))")
        }
    }
}

private protocol TOMLReadable {
    static var tomlDescription: String { get }
    static func read(_ value: TOMLValueConvertible) -> Self?
}

extension String: TOMLReadable {
    static var tomlDescription: String { "a string" }
    static func read(_ value: TOMLValueConvertible) -> String? { value.string }
}

extension Int: TOMLReadable {
    static var tomlDescription: String { "an integer" }
    static func read(_ value: TOMLValueConvertible) -> Int? { value.int }
}

extension Array: TOMLReadable where Element == String {
    static var tomlDescription: String { "an array of strings" }
    static func read(_ value: TOMLValueConvertible) -> [String]? {
        guard let array = value.array else { return nil }
        let strings = array.compactMap(\.string)
        return strings.count == array.count ? strings : nil
    }
}

extension Bool: TOMLReadable {
    static var tomlDescription: String { "true or false" }
    static func read(_ value: TOMLValueConvertible) -> Bool? { value.bool }
}

extension Double: TOMLReadable {
    static var tomlDescription: String { "a number" }
    static func read(_ value: TOMLValueConvertible) -> Double? { value.double ?? value.int.map(Double.init) }
}

extension MailrouteConfiguration {
    /// `[api] listen`: a loopback-or-other TCP address with its port, or a unix socket path.
    fileprivate static func listen(_ text: String, key: String, paths: PathResolver) throws -> API.Listen {
        if text.isEmpty { return .off }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw ConfigFileError("\(key): \"unix:\" needs a socket path, such as unix:/run/mailroute/api.sock") }
            return .unix(path: try paths.resolve(path, key))
        }
        let host: Substring
        let port: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") {
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else if let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        } else {
            throw ConfigFileError("\(key): \"\(text)\" must be HOST:PORT (such as 127.0.0.1:8025 or [::1]:8025) or unix:PATH")
        }
        guard !host.isEmpty, let number = Int(port), (0...65535).contains(number) else {
            throw ConfigFileError("\(key): \"\(text)\" must be HOST:PORT with a port 0-65535")
        }
        return .tcp(host: String(host), port: number)
    }
}

private struct PathResolver {
    let base: String
    func resolve(_ value: String, _ key: String) throws -> String {
        if value.isEmpty || value.hasPrefix("/") { return value }
        return URL(fileURLWithPath: value, relativeTo: URL(fileURLWithPath: base, isDirectory: true))
            .standardizedFileURL.path
    }
}

private func positive(_ value: Double, _ key: String) throws -> Double {
    guard value > 0, value.isFinite else { throw ConfigFileError("\(key) must be a positive number") }
    return value
}

private func atLeast<T: Comparable>(_ minimum: T) -> (T, String) throws -> T {
    { value, key in
        guard value >= minimum else { throw ConfigFileError("\(key) must be at least \(minimum)") }
        return value
    }
}

private func within(_ range: ClosedRange<Int>) -> (Int, String) throws -> Int {
    { value, key in
        guard range.contains(value) else {
            throw ConfigFileError("\(key) must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }
}

private func networks(_ values: [String], _ key: String) throws -> [IPNetwork] {
    try values.map { text in
        guard let network = IPNetwork(text) else {
            throw ConfigFileError("\(key): \"\(text)\" is not a network in CIDR form (such as \"10.1.0.0/16\" or \"fd00::/8\")")
        }
        return network
    }
}

private func nonEmpty(_ value: String, _ key: String) throws -> String {
    guard !value.isEmpty else { throw ConfigFileError("\(key) must not be empty") }
    return value
}

private func emailAddress(_ value: String, _ key: String) throws -> String {
    do {
        return try EmailAddress(parsing: value).address
    } catch {
        throw ConfigFileError("\(key): \(error)")
    }
}

private func oneOf<T: RawRepresentable>(_ text: String, _ key: String, _ allowed: [String]) throws -> T
where T.RawValue == String {
    guard let value = T(rawValue: text) else {
        throw ConfigFileError("\(key) must be one of \(allowed.joined(separator: ", ")), not \"\(text)\"")
    }
    return value
}
