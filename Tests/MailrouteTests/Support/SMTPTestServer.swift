import Foundation

/// A real SMTP server (Debian's aiosmtpd, or our fault server) on 127.0.0.1, started for
/// one test and killed when the test drops it.
final class SMTPTestServer: @unchecked Sendable {
    let port: Int
    let outDirectory: URL
    private let process: Process

    struct Options {
        var starttls = false
        var implicitTLS = false
        var auth: (user: String, password: String)?
        /// More logins the server accepts besides `auth`.
        var moreLogins: [(user: String, password: String)] = []
        var rejectFrom: [String] = []
        var rejectRecipients: [String] = []
        var tempfailRecipients: [String] = []
        /// Accept DATA of any size (aiosmtpd refuses more than 32 MiB with 552 by default).
        var noSizeLimit = false
    }

    /// An aiosmtpd server with the given behaviour.
    convenience init(_ options: Options = Options()) throws {
        var arguments: [String] = []
        if options.starttls || options.implicitTLS {
            let ca = TestCA.shared
            arguments += ["--cert", ca.certFile, "--key", ca.keyFile]
        }
        if options.starttls { arguments.append("--starttls") }
        if options.implicitTLS { arguments.append("--implicit-tls") }
        if let auth = options.auth { arguments += ["--auth", "\(auth.user):\(auth.password)"] }
        for login in options.moreLogins { arguments += ["--auth", "\(login.user):\(login.password)"] }
        for a in options.rejectFrom { arguments += ["--reject-from", a] }
        for a in options.rejectRecipients { arguments += ["--reject-rcpt", a] }
        for a in options.tempfailRecipients { arguments += ["--tempfail-rcpt", a] }
        if options.noSizeLimit { arguments.append("--no-size-limit") }
        try self.init(script: "aiosmtpd_server.py", arguments: arguments)
    }

    /// The fault server, with arguments as `fault_server.py` documents them.
    static func fault(_ arguments: String...) throws -> SMTPTestServer {
        try SMTPTestServer(script: "fault_server.py", arguments: arguments)
    }

    init(script: String, arguments: [String]) throws {
        outDirectory = Paths.temporaryDirectory("smtp")
        process = Process()
        // Debian's aiosmtpd is importable by the system interpreter only.
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [Paths.servers.appendingPathComponent(script).path, "--out", outDirectory.path] + arguments
        let out = Pipe()
        process.standardOutput = out
        _ = FileManager.default.createFile(atPath: outDirectory.appendingPathComponent("server.log").path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: outDirectory.appendingPathComponent("server.log"))
        try process.run()

        // The server prints "PORT n" once it listens; wait for it, but not forever.
        let reader = out.fileHandleForReading
        let ready = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var line = ""
        DispatchQueue.global().async {
            var buffer = Data()
            while !buffer.contains(UInt8(ascii: "\n")) {
                let chunk = reader.availableData
                if chunk.isEmpty { break }
                buffer += chunk
            }
            line = String(decoding: buffer, as: UTF8.self)
            ready.signal()
        }
        guard ready.wait(timeout: .now() + 15) == .success,
            let port = line.split(separator: "\n").first.flatMap({ Int($0.replacingOccurrences(of: "PORT ", with: "")) })
        else {
            process.terminate()
            let log = (try? String(contentsOf: outDirectory.appendingPathComponent("server.log"), encoding: .utf8)) ?? ""
            throw TestServerError.didNotStart(log)
        }
        self.port = port
    }

    deinit {
        // SIGKILL: a child spawned from a dispatch thread may inherit a blocked SIGTERM.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Messages received so far, oldest first.
    func messages() -> [ReceivedMessage] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: outDirectory.path)) ?? []
        return files.filter { $0.hasSuffix(".eml") }.sorted().compactMap { name in
            let base = outDirectory.appendingPathComponent(String(name.dropLast(4)))
            guard let data = FileManager.default.contents(atPath: base.path + ".eml"),
                let meta = FileManager.default.contents(atPath: base.path + ".json"),
                let envelope = try? JSONDecoder().decode(ReceivedMessage.Envelope.self, from: meta)
            else { return nil }
            return ReceivedMessage(data: data, envelope: envelope)
        }
    }

    /// The most connections the server had open at once, from its events in order.
    func maxConcurrentConnections() -> Int {
        var open = 0, most = 0
        for event in events() {
            if event == "connect" { open += 1 }
            if event == "disconnect" { open -= 1 }
            most = max(most, open)
        }
        return most
    }

    /// Server-side events (`connect`, `quit`, `disconnect`).
    func events() -> [String] {
        let text = (try? String(contentsOf: outDirectory.appendingPathComponent("events.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["event"] as? String
        }
    }
}

struct ReceivedMessage {
    struct Envelope: Decodable {
        var mail_from: String
        var rcpt_tos: [String]
        var login: String?
        /// When the server accepted it (Unix time); aiosmtpd only.
        var at: Double?
    }
    var data: Data
    var envelope: Envelope
    var text: String { String(decoding: data, as: UTF8.self) }

    /// The value of the first header with this name (unfolded).
    func header(_ name: String) -> String? {
        let head = text.components(separatedBy: "\r\n\r\n").first ?? ""
        let unfolded = head.replacingOccurrences(of: "\r\n ", with: " ").replacingOccurrences(of: "\r\n\t", with: " ")
        for line in unfolded.components(separatedBy: "\r\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == name.lowercased() {
                return parts[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

enum TestServerError: Error {
    case didNotStart(String)
}
