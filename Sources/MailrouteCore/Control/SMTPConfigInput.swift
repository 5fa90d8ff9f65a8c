import Foundation

/// What an operator may set on a configuration; nil leaves a field as it is (`edit`) or at
/// its default (`add`). Validation names the option that is wrong.
public struct SMTPConfigInput: Sendable {
    public var name: String?
    public var host: String?
    public var port: Int?
    public var security: SMTPSecurity?
    /// Empty clears it (and the password).
    public var username: String?
    /// Clear text from stdin; sealed before it reaches the store.
    public var password: String?
    public var fromAddress: String?
    /// Empty clears it.
    public var fromName: String?
    /// Empty clears it.
    public var replyTo: String?
    public var fallback: FallbackPolicy?
    public var dkim: DKIMMode?
    public var authorizedDomains: String?
    public var authorizedSenders: String?
    public var blockUnauthorized: Bool?
    public var priority: Int?
    /// 0 returns to `[delivery] default_max_connections`.
    public var maxConnections: Int?
    /// 0 removes the limit.
    public var ratePerMinute: Int?
    /// Empty returns to the system CAs.
    public var caFile: String?

    public init() {}

    /// Applies this input over `record`, validating every field it sets.
    func apply(to record: inout SMTPConfigRecord, seal: (String) throws -> Data) throws {
        if let name { record.name = try Validate.identifier(name, field: "--name") }
        if let host { record.host = try Validate.host(host) }
        if let port {
            guard (1...65535).contains(port) else { throw MailrouteError.invalid(field: "--port", reason: "must be 1-65535, not \(port)") }
            record.port = port
        }
        if let security { record.security = security }
        if let username {
            try Validate.secretish(username, field: "--username")
            record.username = username.isEmpty ? nil : username
            if username.isEmpty { record.passwordSealed = nil }
        }
        if let password {
            try Validate.secretish(password, field: "password")
            guard record.username != nil else {
                throw MailrouteError.invalid(field: "password", reason: "a password needs a --username")
            }
            record.passwordSealed = password.isEmpty ? nil : try seal(password)
        }
        if let fromAddress { record.fromAddress = try Validate.bareAddress(fromAddress, field: "--from-address") }
        if let fromName {
            guard fromName.count <= 255 else { throw MailrouteError.invalid(field: "--from-name", reason: "at most 255 characters") }
            guard !fromName.contains(where: \.isNewline), !fromName.contains("\0") else {
                throw MailrouteError.invalid(field: "--from-name", reason: "may not contain line breaks")
            }
            record.fromName = fromName.isEmpty ? nil : fromName
        }
        if let replyTo {
            record.replyTo = replyTo.isEmpty ? nil : try Validate.bareAddress(replyTo, field: "--reply-to")
        }
        if let fallback { record.fallback = fallback }
        if let dkim { record.dkim = dkim }
        if let authorizedDomains {
            record.authorizedDomains = try Validate.list(authorizedDomains, field: "--authorized-domains") { item in
                try Validate.domain(item, field: "--authorized-domains")
            }
        }
        if let authorizedSenders {
            record.authorizedSenders = try Validate.list(authorizedSenders, field: "--authorized-senders") { item in
                try Validate.bareAddress(item, field: "--authorized-senders")
            }
        }
        if let blockUnauthorized { record.blockUnauthorized = blockUnauthorized }
        if let priority {
            guard (1...5).contains(priority) else { throw MailrouteError.invalid(field: "--priority", reason: "must be 1-5, not \(priority)") }
            record.priority = priority
        }
        if let maxConnections {
            guard (0...100).contains(maxConnections) else {
                throw MailrouteError.invalid(field: "--max-connections", reason: "must be 1-100 (0 for the default), not \(maxConnections)")
            }
            record.maxConnections = maxConnections == 0 ? nil : maxConnections
        }
        if let ratePerMinute {
            guard ratePerMinute >= 0 else {
                throw MailrouteError.invalid(field: "--rate-per-minute", reason: "must be positive (0 for no limit)")
            }
            record.ratePerMinute = ratePerMinute == 0 ? nil : ratePerMinute
        }
        if let caFile {
            if caFile.isEmpty {
                record.caFile = nil
            } else {
                let path = URL(fileURLWithPath: caFile).standardizedFileURL.path
                guard FileManager.default.isReadableFile(atPath: path) else {
                    throw MailrouteError.invalid(field: "--ca-file", reason: "\(caFile) is not a readable file")
                }
                record.caFile = path
            }
        }
    }
}

/// Checks shared by the CLI's options and the store's inputs.
public enum Validate {
    /// Tenants and configuration names: they appear in `T/N`, so no slash.
    public static func identifier(_ value: String, field: String) throws -> String {
        guard (1...255).contains(value.count) else {
            throw MailrouteError.invalid(field: field, reason: "must be 1-255 characters")
        }
        guard !value.contains("/"), !value.unicodeScalars.contains(where: { $0.value < 32 || $0.value == 127 }) else {
            throw MailrouteError.invalid(field: field, reason: "\"\(value)\" may not contain / or control characters")
        }
        return value
    }

    public static func host(_ value: String) throws -> String {
        do {
            return try DNSName.host(value)
        } catch {
            throw MailrouteError.invalid(field: "--host", reason: error.description)
        }
    }

    /// A domain of at least two labels (an authorized domain is `brand.com` or
    /// `mail.brand.com`, never a bare TLD), lowercased, internationalized names in punycode.
    public static func domain(_ value: String, field: String) throws -> String {
        do {
            return try DNSName.domain(value).lowercased()
        } catch {
            throw MailrouteError.invalid(field: field, reason: error.description)
        }
    }

    /// A mailbox as a queue row holds it: `a@x.com` or `Name <a@x.com>`.
    public static func address(_ value: String, field: String) throws -> String {
        do {
            return try EmailAddress(parsing: value).description
        } catch {
            throw MailrouteError.invalid(field: field, reason: error.description)
        }
    }

    public static func bareAddress(_ value: String, field: String) throws -> String {
        do {
            return try EmailAddress(address: value).address
        } catch {
            throw MailrouteError.invalid(field: field, reason: error.description)
        }
    }

    /// Usernames and passwords: at most 255 characters, no line breaks (they would break AUTH).
    static func secretish(_ value: String, field: String) throws {
        guard value.count <= 255 else { throw MailrouteError.invalid(field: field, reason: "at most 255 characters") }
        guard !value.contains(where: { $0.isNewline }), !value.contains("\0") else {
            throw MailrouteError.invalid(field: field, reason: "may not contain line breaks or NUL")
        }
    }

    /// A `;`-separated list, each item checked and normalised; stored joined by `;`.
    static func list(_ value: String, field: String, item: (String) throws -> String) throws -> String {
        try SMTPConfigRecord.splitList(value).map(item).joined(separator: ";")
    }

    /// A route key: a CNAME must be a plain host name, never a wildcard.
    public static func routeKey(_ value: String, kind: RouteKind) throws -> String {
        switch kind {
        case .cname:
            guard !value.contains("*") else {
                throw MailrouteError.invalid(field: "--cname", reason: "wildcard names such as \(value) are not allowed; add one route per name")
            }
            return try domain(Router.normalizeCNAME(value), field: "--cname")
        case .category:
            guard MailrouteConfiguration.Category.isValidName(value) else {
                throw MailrouteError.invalid(field: "--category", reason: "\"\(value)\" must be 1-64 characters of [a-z0-9_.-]")
            }
            return value
        case .advertiser:
            guard (1...255).contains(value.count), !value.unicodeScalars.contains(where: { $0.value < 32 }) else {
                throw MailrouteError.invalid(field: "--advertiser", reason: "must be 1-255 characters without control characters")
            }
            return value
        }
    }
}
