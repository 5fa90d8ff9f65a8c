@preconcurrency import Crypto
import Foundation

/// Seals SMTP passwords with AES-256-GCM. The key lives outside the database: the systemd
/// credential `mailroute.key` (under `$CREDENTIALS_DIRECTORY`) or `[secrets] key_file`.
public struct SecretBox: Sendable {
    private let key: SymmetricKey
    /// Binds ciphertexts to their use, so a sealed password cannot be replayed as another secret kind.
    private static let context = Data("mailroute smtp password v1".utf8)
    private static let version: UInt8 = 1

    public init(key: SymmetricKey) {
        self.key = key
    }

    public func seal(_ secret: String) throws -> Data {
        let box = try AES.GCM.seal(Data(secret.utf8), using: key, authenticating: Self.context)
        guard let combined = box.combined else { throw SecretError.sealFailed }
        return Data([Self.version]) + combined
    }

    public func open(_ sealed: Data) throws -> String {
        guard sealed.first == Self.version else { throw SecretError.unknownFormat }
        do {
            let box = try AES.GCM.SealedBox(combined: sealed.dropFirst())
            let plain = try AES.GCM.open(box, using: key, authenticating: Self.context)
            return String(decoding: plain, as: UTF8.self)
        } catch {
            throw SecretError.wrongKey
        }
    }
}

public enum SecretError: Error, CustomStringConvertible, Equatable {
    /// `sealedPasswords`: how many configurations hold a password sealed with the missing key.
    case noKey(searched: [String], sealedPasswords: Int)
    case unreadableKeyFile(String)
    /// The key file's group or others may read (or write) it: `mode` as found.
    case keyFileOpenToOthers(path: String, mode: mode_t)
    case badKeyFile(String)
    case keyFileExists(String)
    case sealFailed
    case unknownFormat
    case wrongKey

    public var description: String {
        switch self {
        case .noKey(let searched, 0):
            "no encryption key found (looked in \(searched.joined(separator: ", "))); "
                + "if this is a new installation, create one with `mailroutectl key generate`"
        case .noKey(let searched, let sealed):
            // A new key cannot open the stored passwords: suggesting one would lose them all.
            "no encryption key found (looked in \(searched.joined(separator: ", "))), but \(sealed) configuration(s) hold "
                + "passwords sealed with one: point [secrets] key_file (or the systemd credential \(KeyFile.credentialName)) "
                + "at the existing key; do not generate a new one, it cannot decrypt them"
        case .unreadableKeyFile(let path):
            "\(path) exists but this user (uid \(getuid())) cannot read it: run as root, or as a user the key file is shared with"
        case .keyFileOpenToOthers(let path, let mode):
            "\(path) is open to its group or to others (mode \(String(mode, radix: 8))), and it unlocks every stored SMTP "
                + "password: run `chmod 600 \(path)` (under systemd the daemon gets it as the credential "
                + "\(KeyFile.credentialName), which needs no other reader)"
        case .badKeyFile(let path):
            "\(path) does not hold a key: expected 32 bytes, base64-encoded on one line"
        case .keyFileExists(let path):
            "\(path) already exists; replacing it would make every stored password unreadable"
        case .sealFailed: "could not encrypt the password"
        case .unknownFormat: "a stored password has an unknown format"
        case .wrongKey: "a stored password cannot be decrypted with this key (was the key replaced?)"
        }
    }

    /// What the daemon refuses to start with, rather than start without the key: a key others
    /// can read is a leak to stop, not a missing piece to work around.
    public var refusesStart: Bool {
        if case .keyFileOpenToOthers = self { return true }
        return false
    }
}

/// Finds, reads and creates the key file.
public enum KeyFile {
    public static let credentialName = "mailroute.key"

    /// The places the key may be, in the order they are tried.
    public static func candidates(configured: String, environment: [String: String]) -> [String] {
        var paths: [String] = []
        if let dir = environment["CREDENTIALS_DIRECTORY"], !dir.isEmpty {
            paths.append("\(dir)/\(credentialName)")
        }
        if !configured.isEmpty { paths.append(configured) }
        return paths
    }

    public static func load(configured: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> SecretBox {
        let paths = candidates(configured: configured, environment: environment)
        for path in paths where FileManager.default.fileExists(atPath: path) {
            guard access(path, R_OK) == 0 else { throw SecretError.unreadableKeyFile(path) }
            // systemd's credentials directory is the service's alone; its files' modes are systemd's.
            if !isCredential(path, environment: environment) { try checkPrivate(path) }
            return SecretBox(key: try read(path))
        }
        throw SecretError.noKey(searched: paths, sealedPasswords: 0)
    }

    static func isCredential(_ path: String, environment: [String: String]) -> Bool {
        guard let dir = environment["CREDENTIALS_DIRECTORY"], !dir.isEmpty else { return false }
        return path == "\(dir)/\(credentialName)"
    }

    /// Only its owner may read or write the key (0600 or 0400, as `generate` and the package make it).
    static func checkPrivate(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { return }
        if info.st_mode & 0o077 != 0 { throw SecretError.keyFileOpenToOthers(path: path, mode: info.st_mode & 0o7777) }
    }

    static func read(_ path: String) throws -> SymmetricKey {
        guard let data = FileManager.default.contents(atPath: path) else { throw SecretError.badKeyFile(path) }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let bytes = Data(base64Encoded: text), bytes.count == 32 else { throw SecretError.badKeyFile(path) }
        return SymmetricKey(data: bytes)
    }

    /// Writes a new random key with mode 0600, never over an existing file.
    public static func generate(at path: String) throws {
        let key = SymmetricKey(size: .bits256)
        let text = key.withUnsafeBytes { Data($0).base64EncodedString() } + "\n"
        do {
            try PrivateFile.create(at: path, contents: Array(text.utf8))
        } catch PrivateFile.Exists.exists {
            throw SecretError.keyFileExists(path)
        }
    }
}
