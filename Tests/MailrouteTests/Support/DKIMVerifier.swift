import Foundation

@testable import MailrouteCore

/// dkimpy (Debian's python3-dkim), an implementation that shares no code with ours, verifying
/// a message; the TXT records are handed to it through its DNS hook, so no lookup leaves the
/// machine.
enum DKIMVerifier {
    struct Signature: Decodable {
        var d: String
        var s: String
        var a: String
        var h: String
        var ok: Bool
    }

    struct Report: Decodable {
        var signatures: [Signature]
        var error: String?
        var allPass: Bool { !signatures.isEmpty && signatures.allSatisfy(\.ok) }
    }

    static func verify(file: URL, records: [String: String]) throws -> Report {
        let dir = Paths.temporaryDirectory("dkim")
        defer { try? FileManager.default.removeItem(at: dir) }
        let recordsFile = dir.appendingPathComponent("records.json")
        try JSONEncoder().encode(records).write(to: recordsFile)
        let result = try runProcess(
            URL(fileURLWithPath: "/usr/bin/python3"),
            [Paths.servers.appendingPathComponent("dkim_verify.py").path, file.path, recordsFile.path], timeout: 30)
        guard result.status == 0 else { throw VerifierFailed(output: result.output) }
        return try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
    }

    static func verify(_ message: [UInt8], records: [String: String]) throws -> Report {
        let file = Paths.temporaryDirectory("msg").appendingPathComponent("m.eml")
        try Data(message).write(to: file)
        return try verify(file: file, records: records)
    }

    static func records(_ keys: [DKIMKey]) -> [String: String] {
        Dictionary(keys.map { ($0.dnsName, $0.txtRecord) }, uniquingKeysWith: { a, _ in a })
    }

    struct VerifierFailed: Error, CustomStringConvertible {
        var output: String
        var description: String { "dkim_verify.py failed: \(output)" }
    }
}

/// Private keys made by the openssl CLI, in the forms operators bring.
enum OpenSSLKeys {
    static func make(_ shell: String) throws -> String {
        let dir = Paths.temporaryDirectory("openssl")
        defer { try? FileManager.default.removeItem(at: dir) }
        let result = try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", "cd '\(dir.path)' && \(shell) 2>/dev/null && cat key.pem"])
        guard result.status == 0 else { throw DKIMVerifier.VerifierFailed(output: result.output) }
        return result.stdout
    }

    static func rsaPKCS1(bits: Int = 2048) throws -> String { try make("openssl genrsa -traditional -out key.pem \(bits)") }
    static func rsaPKCS8() throws -> String { try make("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem") }
    static func ed25519() throws -> String { try make("openssl genpkey -algorithm ed25519 -out key.pem") }
}
