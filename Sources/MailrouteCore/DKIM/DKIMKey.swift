import COpenSSL
import Crypto
import Foundation
import _CryptoExtras

/// The two signing algorithms a DKIM verifier is expected to know (RFC 8301, RFC 8463).
public enum DKIMAlgorithm: String, Sendable, CaseIterable, Codable {
    case rsaSHA256 = "rsa-sha256"
    case ed25519SHA256 = "ed25519-sha256"

    /// The `k=` of the DNS record.
    public var keyType: String {
        switch self {
        case .rsaSHA256: "rsa"
        case .ed25519SHA256: "ed25519"
        }
    }
}

public struct DKIMKeyError: Error, CustomStringConvertible, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// One private key that signs for `domain` under `selector`.
public struct DKIMKey: Sendable {
    public let domain: String
    public let selector: String
    public let algorithm: DKIMAlgorithm
    /// The modulus size for RSA, 256 for Ed25519.
    public let bits: Int
    private let signer: Signer

    /// `domain/selector (algorithm)`, how commands name a key.
    public var label: String { "\(domain)/\(selector) (\(algorithm.rawValue))" }

    private enum Signer: @unchecked Sendable {
        // Curve25519 keys are immutable values; swift-crypto 3 just does not annotate them.
        // An RSA key is read by swift-crypto (its checks, its public key for the DNS record)
        // and signs through OpenSSL, which is twice as fast here (`COpenSSL/shim.h`).
        case rsa(_RSA.Signing.PrivateKey, OpenSSLKey)
        case ed25519(Curve25519.Signing.PrivateKey)
    }

    /// RFC 8301: verifiers must refuse RSA keys under 1024 bits, so such a key would only
    /// produce signatures that fail.
    static let minimumRSABits = 1024

    /// Reads a PEM private key: PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`, RSA or Ed25519).
    public init(pem: String, domain: String, selector: String) throws(DKIMKeyError) {
        self.domain = domain.lowercased()
        self.selector = selector
        let (label, der) = try Self.decodePEM(pem)
        switch label {
        case "RSA PRIVATE KEY":
            signer = .rsa(try Self.rsaKey(der), try OpenSSLKey(der: der, pkcs8: false))
        case "PRIVATE KEY":
            switch try PKCS8.algorithm(of: der) {
            case PKCS8.rsaEncryption:
                signer = .rsa(try Self.rsaKey(der), try OpenSSLKey(der: der, pkcs8: true))
            case PKCS8.ed25519:
                let seed = try PKCS8.ed25519Seed(der)
                do {
                    signer = .ed25519(try Curve25519.Signing.PrivateKey(rawRepresentation: seed))
                } catch {
                    throw DKIMKeyError("the Ed25519 key is malformed")
                }
            case let oid:
                throw DKIMKeyError("unsupported key algorithm \(oid); DKIM signs with RSA or Ed25519")
            }
        case "ENCRYPTED PRIVATE KEY":
            throw DKIMKeyError("the key is encrypted with a passphrase; the daemon needs it unencrypted (mode 0600)")
        default:
            throw DKIMKeyError("expected a \"PRIVATE KEY\" or \"RSA PRIVATE KEY\" PEM block, found \"\(label)\"")
        }
        switch signer {
        case .rsa(let key, _):
            algorithm = .rsaSHA256
            bits = key.keySizeInBits
            guard bits >= Self.minimumRSABits else {
                throw DKIMKeyError("the RSA key has \(bits) bits; verifiers refuse keys under \(Self.minimumRSABits) (use 2048)")
            }
        case .ed25519:
            algorithm = .ed25519SHA256
            bits = 256
        }
    }

    /// A new key and its PEM text: RSA 2048 (PKCS#1) or Ed25519 (PKCS#8).
    public static func generate(domain: String, selector: String, algorithm: DKIMAlgorithm) throws -> (key: DKIMKey, pem: String) {
        let pem: String
        switch algorithm {
        case .rsaSHA256:
            pem = try _RSA.Signing.PrivateKey(keySize: .bits2048).pemRepresentation
        case .ed25519SHA256:
            let der = PKCS8.wrapEd25519(seed: [UInt8](Curve25519.Signing.PrivateKey().rawRepresentation))
            pem = Self.encodePEM(label: "PRIVATE KEY", der: der)
        }
        return (try DKIMKey(pem: pem, domain: domain, selector: selector), pem)
    }

    /// `p=` of the DNS record: the SubjectPublicKeyInfo for RSA (RFC 6376), the raw 32 bytes
    /// for Ed25519 (RFC 8463).
    public var publicKeyBase64: String {
        switch signer {
        case .rsa(let key, _): key.publicKey.derRepresentation.base64EncodedString()
        case .ed25519(let key): key.publicKey.rawRepresentation.base64EncodedString()
        }
    }

    /// Where the record goes: `selector._domainkey.domain`.
    public var dnsName: String { "\(selector)._domainkey.\(domain)" }

    /// The TXT record's value, as one string.
    public var txtRecord: String { "v=DKIM1; k=\(algorithm.keyType); p=\(publicKeyBase64)" }

    /// The record in zone-file form; a TXT string holds at most 255 octets, so a 2048-bit RSA
    /// record is split into several strings that resolvers join.
    public var zoneFileRecord: String {
        let text = txtRecord
        var chunks: [Substring] = []
        var rest = text[...]
        while !rest.isEmpty {
            chunks.append(rest.prefix(250))
            rest = rest.dropFirst(250)
        }
        let strings = chunks.map { "\"\($0)\"" }
        if strings.count == 1 { return "\(dnsName). IN TXT \(strings[0])" }
        return "\(dnsName). IN TXT ( " + strings.joined(separator: "\n    ") + " )"
    }

    /// Signs the SHA-256 hash of the canonicalized headers (RFC 6376 §3.7; RFC 8463 §3 signs
    /// the same hash with PureEdDSA).
    func sign(headerHash: SHA256.Digest) throws -> [UInt8] {
        switch signer {
        case .rsa(_, let key):
            return try key.sign(headerHash)
        case .ed25519(let key):
            return [UInt8](try key.signature(for: Data(headerHash)))
        }
    }

    // MARK: - PEM

    static func decodePEM(_ text: String) throws(DKIMKeyError) -> (label: String, der: [UInt8]) {
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let begin = lines.firstIndex(where: { $0.hasPrefix("-----BEGIN ") && $0.hasSuffix("-----") }) else {
            throw DKIMKeyError("no PEM block (-----BEGIN …-----) found")
        }
        let label = String(lines[begin].dropFirst("-----BEGIN ".count).dropLast(5))
        guard let end = lines[begin...].firstIndex(of: "-----END \(label)-----") else {
            throw DKIMKeyError("the PEM block \"\(label)\" has no END line")
        }
        let body = lines[(begin + 1)..<end].filter { !$0.contains(":") }.joined()
        guard let der = Data(base64Encoded: body), !der.isEmpty else {
            throw DKIMKeyError("the PEM block \"\(label)\" is not valid base64")
        }
        return (label, [UInt8](der))
    }

    static func encodePEM(label: String, der: [UInt8]) -> String {
        let base64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return "-----BEGIN \(label)-----\n\(base64)\n-----END \(label)-----\n"
    }

    private static func rsaKey(_ der: [UInt8]) throws(DKIMKeyError) -> _RSA.Signing.PrivateKey {
        do {
            // `unsafe`: swift-crypto's floor is 2048, DKIM's is 1024 (RFC 8301).
            return try _RSA.Signing.PrivateKey(unsafeDERRepresentation: der)
        } catch CryptoKitError.incorrectParameterSize {
            throw DKIMKeyError("the RSA key is under \(minimumRSABits) bits, which verifiers refuse (use 2048)")
        } catch {
            throw DKIMKeyError("the RSA key cannot be read (\(error))")
        }
    }
}

/// An RSA private key held by OpenSSL. Immutable once read, so concurrent signatures with
/// their own contexts are safe.
final class OpenSSLKey: @unchecked Sendable {
    private let key: OpaquePointer

    init(der: [UInt8], pkcs8: Bool) throws(DKIMKeyError) {
        guard let key = der.withUnsafeBufferPointer({ mr_private_key_from_der($0.baseAddress, $0.count, pkcs8 ? 1 : 0) }) else {
            throw DKIMKeyError("the RSA key cannot be read by OpenSSL")
        }
        self.key = key
    }

    deinit { mr_private_key_free(key) }

    /// RSASSA-PKCS1-v1_5 with SHA-256: deterministic, so byte for byte what swift-crypto makes.
    func sign(_ digest: SHA256.Digest) throws -> [UInt8] {
        var signature = [UInt8](repeating: 0, count: 1024)
        let length = Array(digest).withUnsafeBufferPointer { d in
            signature.withUnsafeMutableBufferPointer { mr_rsa_sign_sha256_digest(key, d.baseAddress, d.count, $0.baseAddress, $0.count) }
        }
        guard length > 0 else { throw DKIMKeyError("OpenSSL could not sign with the RSA key") }
        return Array(signature[..<Int(length)])
    }
}

/// Just enough DER to read a PKCS#8 PrivateKeyInfo (RFC 5208 / 5958) and write an Ed25519 one
/// (RFC 8410): swift-crypto 3 reads Ed25519 keys only as raw bytes.
enum PKCS8 {
    static let rsaEncryption = "1.2.840.113549.1.1.1"
    static let ed25519 = "1.3.101.112"

    /// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }
    static let ed25519Prefix: [UInt8] = [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]

    static func wrapEd25519(seed: [UInt8]) -> [UInt8] { ed25519Prefix + seed }

    static func algorithm(of der: [UInt8]) throws(DKIMKeyError) -> String {
        var outer = DERReader(der)
        var info = try outer.read(tag: 0x30)
        _ = try info.read(tag: 0x02)  // version
        var algorithm = try info.read(tag: 0x30)
        let oid = try algorithm.read(tag: 0x06)
        return oidString(oid.bytes)
    }

    static func ed25519Seed(_ der: [UInt8]) throws(DKIMKeyError) -> [UInt8] {
        var outer = DERReader(der)
        var info = try outer.read(tag: 0x30)
        _ = try info.read(tag: 0x02)
        _ = try info.read(tag: 0x30)
        var privateKey = try info.read(tag: 0x04)
        let seed = try privateKey.read(tag: 0x04)
        guard seed.bytes.count == 32 else { throw DKIMKeyError("the Ed25519 key is not 32 bytes") }
        return Array(seed.bytes)
    }

    static func oidString(_ bytes: ArraySlice<UInt8>) -> String {
        guard let first = bytes.first else { return "" }
        var parts = [Int(first) / 40, Int(first) % 40]
        var value = 0
        for byte in bytes.dropFirst() {
            value = value << 7 | Int(byte & 0x7F)
            if byte & 0x80 == 0 {
                parts.append(value)
                value = 0
            }
        }
        return parts.map(String.init).joined(separator: ".")
    }

    struct DERReader {
        var bytes: ArraySlice<UInt8>
        init(_ bytes: [UInt8]) { self.bytes = bytes[...] }
        init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }

        /// Reads one element with `tag` and returns a reader over its contents.
        mutating func read(tag: UInt8) throws(DKIMKeyError) -> DERReader {
            let malformed = DKIMKeyError("the key is not a well-formed PKCS#8 structure")
            guard bytes.count >= 2, bytes.first == tag else { throw malformed }
            var index = bytes.startIndex + 1
            var length = Int(bytes[index])
            index += 1
            if length & 0x80 != 0 {
                let count = length & 0x7F
                guard (1...4).contains(count), bytes.endIndex - index >= count else { throw malformed }
                length = bytes[index..<(index + count)].reduce(0) { $0 << 8 | Int($1) }
                index += count
            }
            guard bytes.endIndex - index >= length else { throw malformed }
            let contents = bytes[index..<(index + length)]
            bytes = bytes[(index + length)...]
            return DERReader(contents)
        }
    }
}
