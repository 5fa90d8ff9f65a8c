import Foundation

@testable import MailrouteCore

/// `psql` against one database of the test server: what an enqueuing service (or an operator
/// at a prompt) does with a PostgreSQL queue, synchronously, in a process of its own (so it
/// never waits on the cooperative pool).
///
/// Values never go into the SQL text: `Script.text` binds each as a psql variable and
/// writes `:'vN'`, which psql sends as a correctly quoted literal.
struct PSQL: Sendable {
    var host: String
    var port: Int
    var user: String
    var password: String
    var database: String

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let executable: URL = {
        for path in ["/usr/bin/psql", "/usr/local/bin/psql"] where FileManager.default.isExecutableFile(atPath: path) {
            return URL(fileURLWithPath: path)
        }
        return URL(fileURLWithPath: "/usr/bin/psql")
    }()

    /// A script and the variables it uses.
    struct Script {
        private(set) var sql = ""
        private(set) var variables: [String: String] = [:]

        init(_ sql: String = "") { self.sql = sql }

        mutating func append(_ sql: String) { self.sql += sql }

        /// A text value as a literal (`:'vN'`), or NULL.
        mutating func text(_ value: String?) -> String {
            guard let value else { return "NULL" }
            let name = "v\(variables.count)"
            variables[name] = value
            return ":'\(name)'"
        }

        /// Bytes as a `bytea` expression.
        mutating func bytes(_ value: Data) -> String {
            "decode(\(text(value.map { String(format: "%02x", $0) }.joined())), 'hex')"
        }

        func number(_ value: Int?) -> String { value.map { "\($0)" } ?? "NULL" }
        func number(_ value: Int64?) -> String { value.map { "\($0)" } ?? "NULL" }
        func number(_ value: Double?) -> String { value.map { "\($0)" } ?? "NULL" }
    }

    /// Runs `script` to its end in one session (stop at the first error); returns what it printed
    /// (unaligned, tuples only: one line per row, `|` between columns).
    @discardableResult
    func run(_ script: Script) throws -> String {
        var arguments = [
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", "\(port)", "-U", user, "-d", database,
        ]
        for (name, value) in script.variables.sorted(by: { $0.key < $1.key }) { arguments += ["-v", "\(name)=\(value)"] }
        let result = try runProcess(
            Self.executable, arguments, stdin: script.sql,
            environment: ["PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "mailroute-tests"], timeout: 30)
        guard result.status == 0 else {
            throw Failure(description: "psql exited \(result.status): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return result.stdout
    }

    @discardableResult
    func run(_ sql: String) throws -> String { try run(Script(sql)) }

    /// The single value a script's last statement printed, e.g. `INSERT … RETURNING id`.
    func value(_ script: Script) throws -> String {
        let lines = try run(script).split(separator: "\n", omittingEmptySubsequences: true)
        guard let last = lines.last else { throw Failure(description: "psql printed nothing for: \(script.sql)") }
        return String(last)
    }

    func int64(_ script: Script) throws -> Int64 {
        let text = try value(script)
        guard let value = Int64(text.trimmingCharacters(in: .whitespaces)) else { throw Failure(description: "not a number: \(text)") }
        return value
    }

    /// Rows as `jsonb_agg` returns them (on one line, unlike `json_agg`), decoded as Mailroute decodes its records (snake case).
    func rows<T: Decodable>(_ type: T.Type, _ script: Script) throws -> [T] {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode([T].self, from: Data(try value(script).utf8))
    }

    // MARK: - Mailroute's tables

    /// `messages` rows matching `condition` (SQL over the alias `m`), by id.
    func messages(where condition: String, _ script: Script = Script()) throws -> [MessageRecord] {
        var script = script
        script.append("SELECT coalesce(jsonb_agg(m ORDER BY m.id), '[]'::jsonb) FROM messages m WHERE \(condition);\n")
        return try rows(MessageRecord.self, script)
    }

    func message(_ id: Int64) throws -> MessageRecord? {
        try messages(where: "m.id = \(id)").first
    }

    func attempts(_ messageID: Int64) throws -> [AttemptRecord] {
        try rows(
            AttemptRecord.self,
            Script("SELECT coalesce(jsonb_agg(a ORDER BY a.attempt, a.id), '[]'::jsonb) FROM attempts a WHERE a.message_id = \(messageID);\n"))
    }

    /// A configuration; its sealed password (bytea) as base64, as JSONDecoder reads `Data`.
    func config(tenant: String, name: String) throws -> SMTPConfigRecord? {
        var script = Script()
        script.append(
            """
            SELECT coalesce(jsonb_agg(to_jsonb(c) || jsonb_build_object(
                       'password_sealed', translate(encode(c.password_sealed, 'base64'), E'\\n', ''))), '[]'::jsonb)
            FROM smtp_configs c WHERE c.tenant = \(script.text(tenant)) AND c.name = \(script.text(name));

            """)
        return try rows(SMTPConfigRecord.self, script).first
    }

    func count(status: MessageStatus) throws -> Int {
        var script = Script()
        script.append("SELECT count(*) FROM messages WHERE status = \(script.text(status.rawValue));\n")
        return Int(try int64(script))
    }
}
