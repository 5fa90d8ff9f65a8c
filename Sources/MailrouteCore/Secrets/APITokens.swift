import Crypto
import Foundation

/// The bearer tokens the HTTP API accepts (SPEC §9): the systemd credential
/// `mailroute.api-token` or `[api] token_file`, one token per line.
public struct APITokens: Sendable {
    public static let credentialName = "mailroute.api-token"

    /// Digests, not the tokens: every comparison then covers 32 bytes whatever was sent, so
    /// neither a token's length nor its first differing byte shows in the time taken.
    private let digests: [[UInt8]]

    public var isEmpty: Bool { digests.isEmpty }

    public init(_ tokens: [String]) {
        digests = tokens.map { Array(SHA256.hash(data: Data($0.utf8))) }
    }

    public func accepts(_ presented: some StringProtocol) -> Bool {
        let candidate = Array(SHA256.hash(data: Data(presented.utf8)))
        // Every byte of every token is compared, with no early exit, so neither where the
        // first difference is nor which token matched shows in the time taken.
        var matches: UInt8 = 0
        for digest in digests {
            var difference: UInt8 = 0
            for i in 0..<32 { difference |= digest[i] ^ candidate[i] }
            matches |= difference == 0 ? 1 : 0
        }
        return matches == 1
    }

    /// The tokens, from the credential first, then the file; refuses a file others may read.
    public static func load(_ api: MailrouteConfiguration.API, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> APITokens {
        var path: String?
        if let dir = environment["CREDENTIALS_DIRECTORY"], !dir.isEmpty, FileManager.default.fileExists(atPath: "\(dir)/\(credentialName)") {
            path = "\(dir)/\(credentialName)"
        } else if !api.tokenFile.isEmpty {
            guard FileManager.default.fileExists(atPath: api.tokenFile) else {
                throw ConfigFileError("[api] token_file \(api.tokenFile) does not exist")
            }
            var info = stat()
            if stat(api.tokenFile, &info) == 0, info.st_mode & 0o007 != 0 {
                throw ConfigFileError(
                    "[api] token_file \(api.tokenFile) can be read by every user (mode \(String(info.st_mode & 0o7777, radix: 8))): "
                        + "chmod 0640 it (owner root, group mailroute)")
            }
            path = api.tokenFile
        }
        guard let path else {
            throw ConfigFileError(
                "[api] listen is set but there is no token: set [api] token_file or the credential \(credentialName) (one token per line)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigFileError("[api] token file \(path) cannot be read: \(MailrouteConfiguration.whyUnreadable(path))")
        }
        let tokens = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard !tokens.isEmpty else { throw ConfigFileError("[api] token file \(path) holds no token") }
        if let short = tokens.first(where: { $0.count < 16 }) {
            throw ConfigFileError("[api] token file \(path): a token of \(short.count) characters is too easy to guess; use at least 16 (openssl rand -hex 32)")
        }
        return APITokens(tokens)
    }
}
