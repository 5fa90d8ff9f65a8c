import Foundation

/// Which messages `queue list` and `GET /v1/messages` show: the message trace (SPEC §9).
/// Every condition given must hold; the answer is newest first (by id), at most `limit` rows.
///
/// - `config`: mail that configuration was meant to carry or did carry: its current (or
///   last) configuration is T/N, or any attempt went through T/N. So the mail of a broken
///   server is found after it left through the relay (route `fallback`), including mail sent
///   straight to the relay while T/N was down, which never tried T/N itself. Attempts are
///   matched by their `tenant/name` label, so the trace outlives the configuration's deletion.
/// - `route`: the message's route as recorded (`advertiser` … `fallback`).
/// - `since`: created at or after, Unix seconds.
/// - `recipientDomain`: some address in `rcpt_to`, `cc` or `bcc` is at exactly this domain
///   (not a subdomain, and never a display name's text), case-insensitively; an
///   internationalized name matches rows written in Unicode or in punycode.
public struct MessageFilter: Sendable, Equatable {
    public var tenant: String?
    public var status: MessageStatus?
    public var config: ConfigRef?
    public var route: RouteStep?
    public var since: Double?
    /// As given, lowercase (Unicode or punycode); rows are matched on `recipientDomainForms`.
    public var recipientDomain: String?
    public var limit = MessageFilter.defaultLimit

    public static let defaultLimit = 100
    /// For the text forms only: an operator's or a client's request, not the store's own limit
    /// (tests and tools that read a whole queue through the store may ask for more).
    public static let limits = 1...1000

    public init(
        tenant: String? = nil, status: MessageStatus? = nil, config: ConfigRef? = nil, route: RouteStep? = nil,
        since: Double? = nil, recipientDomain: String? = nil, limit: Int = MessageFilter.defaultLimit
    ) {
        self.tenant = tenant
        self.status = status
        self.config = config
        self.route = route
        self.since = since
        self.recipientDomain = recipientDomain
        self.limit = limit
    }

    /// Parses the text forms, CLI options and query parameters alike: nil or empty is "any".
    /// Errors are `MailrouteError.invalid` naming the field by its plain name (`tenant`,
    /// `status`, `config`, `route`, `since`, `domain`, `limit`), so the API can answer 400
    /// naming it. `now` anchors the relative forms of `since`.
    public init(
        tenant: String?, status: String?, config: String?, route: String?, since: String?, domain: String?, limit: String?,
        now: Double = Date().timeIntervalSince1970
    ) throws {
        func given(_ text: String?) -> String? {
            guard let text = text?.trimmingSpaces, !text.isEmpty else { return nil }
            return text
        }
        self.init()
        self.tenant = try given(tenant).map { try Validate.identifier($0, field: "tenant") }
        if let text = given(status) {
            guard let value = MessageStatus(rawValue: text) else {
                throw MailrouteError.invalid(field: "status", reason: Self.oneOf(text, MessageStatus.allCases.map(\.rawValue)))
            }
            self.status = value
        }
        if let text = given(config) {
            let parts = text.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw MailrouteError.invalid(field: "config", reason: "\"\(text)\" must be written TENANT/NAME")
            }
            do {
                self.config = ConfigRef(
                    tenant: try Validate.identifier(String(parts[0]), field: "config"),
                    name: try Validate.identifier(String(parts[1]), field: "config"))
            } catch MailrouteError.invalid(_, let reason) {
                throw MailrouteError.invalid(field: "config", reason: "\"\(text)\" must be written TENANT/NAME: \(reason)")
            }
        }
        if let text = given(route) {
            guard let value = RouteStep(rawValue: text) else {
                throw MailrouteError.invalid(field: "route", reason: Self.oneOf(text, RouteStep.allCases.map(\.rawValue)))
            }
            self.route = value
        }
        self.since = try given(since).map { try Self.time($0, now: now) }
        self.recipientDomain = try given(domain).map(Self.domain)
        if let text = given(limit) {
            guard let value = Int(text), Self.limits.contains(value) else {
                throw MailrouteError.invalid(
                    field: "limit", reason: "\"\(text)\" must be a whole number \(Self.limits.lowerBound)-\(Self.limits.upperBound)")
            }
            self.limit = value
        }
    }

    /// `since`'s grammar, for `--help` and the API's documentation.
    public static let sinceForms =
        "Unix seconds (1796083200), ISO 8601 (2026-12-01T08:00:00Z, 2026-12-01), or a time ago: -3600 (seconds), 90s, 30m, 1h, 2d"

    /// The bounds the schema gives times (2000-01-01 to 2200-01-01): a number outside is a
    /// mistake (milliseconds, or a relative time without its minus sign), not a time.
    private static let plausible = 946_684_800.0...7_258_118_400.0

    static func time(_ text: String, now: Double) throws -> Double {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        var body = Substring(text)
        let ago = body.first == "-"
        if ago { body = body.dropFirst() }
        // Digits only: Double() would also read "nan", "inf" and "1e3".
        func number(_ s: Substring) -> Double? {
            guard !s.isEmpty, s.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) else { return nil }
            return Double(s)
        }
        if let unit = body.last.flatMap({ units[$0] }), let n = number(body.dropLast()) { return now - n * unit }
        if let n = number(body) {
            if ago { return now - n }
            if plausible.contains(n) { return n }
            throw MailrouteError.invalid(
                field: "since",
                reason: "\(text) is not Unix seconds between 2000 and 2200 (milliseconds? divide by 1000; seconds ago? write -\(text))")
        }
        if !ago, let date = iso8601(text) { return date.timeIntervalSince1970 }
        throw MailrouteError.invalid(field: "since", reason: "\"\(text)\" is not \(sinceForms)")
    }

    private static func iso8601(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [
            [.withInternetDateTime], [.withInternetDateTime, .withFractionalSeconds], [.withFullDate],
        ] {
            formatter.formatOptions = options
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }

    /// `example.com`, `@example.com` (as an address's tail is often copied) or `bücher.de`.
    static func domain(_ text: String) throws -> String {
        let bare = text.hasPrefix("@") ? String(text.dropFirst()) : text
        _ = try Validate.domain(bare, field: "domain")
        return bare.precomposedStringWithCanonicalMapping.lowercased()
    }

    /// The spellings a row may hold the domain in: as given (lowercase) and its punycode. SQL
    /// lowercases only ASCII, so a Unicode name matches rows written in lower case.
    public var recipientDomainForms: [String] {
        guard let recipientDomain else { return [] }
        let given = recipientDomain.precomposedStringWithCanonicalMapping.lowercased()
        let ascii = (try? IDNA.toASCII(given))?.lowercased() ?? given
        return ascii == given ? [given] : [given, ascii]
    }

    private static func oneOf(_ text: String, _ names: [String]) -> String {
        "\"\(text)\" is not one of \(names.joined(separator: ", "))"
    }
}
