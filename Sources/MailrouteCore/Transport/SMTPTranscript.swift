/// The lines of one SMTP conversation as libcurl's debug callback reports them, with
/// credentials removed before they are stored.
public struct SMTPTranscript: Sendable, Equatable {
    public enum Direction: Sendable, Equatable { case server, client, info }

    public struct Line: Sendable, Equatable {
        public var direction: Direction
        public var text: String
    }

    public private(set) var lines: [Line] = []
    /// The client line after a 334 challenge carries credentials (AUTH LOGIN / PLAIN continuation).
    private var expectingCredentials = false

    public init() {}

    public mutating func append(_ direction: Direction, chunk: String) {
        for raw in chunk.split(omittingEmptySubsequences: true, whereSeparator: { $0 == "\r\n" || $0 == "\n" || $0 == "\r" }) {
            var text = String(raw)
            switch direction {
            case .server:
                expectingCredentials = text.hasPrefix("334")
            case .client:
                if expectingCredentials {
                    text = "<credentials redacted>"
                    expectingCredentials = false
                } else if text.uppercased().hasPrefix("AUTH ") {
                    let words = text.split(separator: " ")
                    text = words.count > 2 ? "\(words[0]) \(words[1]) <credentials redacted>" : text
                }
            case .info:
                break
            }
            lines.append(Line(direction: direction, text: text))
        }
    }

    public mutating func reset() {
        lines.removeAll(keepingCapacity: true)
        expectingCredentials = false
    }

    public var serverLines: [String] { lines.filter { $0.direction == .server }.map(\.text) }

    /// The verb of the last command sent (`MAIL`, `RCPT`, `DATA`, …); nil before the first.
    public var lastCommand: String? {
        guard let line = lines.last(where: { $0.direction == .client }) else { return nil }
        return line.text.split(separator: " ").first.map { $0.uppercased() }
    }

    /// The last final reply line (not a `250-` continuation), skipping the 221 of QUIT.
    public var lastReply: SMTPReply? {
        for line in lines.reversed() where line.direction == .server {
            if let reply = SMTPReply(line.text), !reply.isContinuation, reply.code != 221 { return reply }
        }
        return nil
    }

    /// Every reply that answered a RCPT TO, paired with its address.
    public var recipientReplies: [(address: String, reply: SMTPReply)] {
        var result: [(String, SMTPReply)] = []
        var pending: [String] = []
        for line in lines {
            switch line.direction {
            case .client:
                let upper = line.text.uppercased()
                if upper.hasPrefix("RCPT TO:") {
                    var address = String(line.text.dropFirst(8))
                    if let open = address.firstIndex(of: "<"), let close = address.firstIndex(of: ">"), open < close {
                        address = String(address[address.index(after: open)..<close])
                    }
                    pending.append(address)
                }
            case .server:
                guard !pending.isEmpty, let reply = SMTPReply(line.text), !reply.isContinuation else { continue }
                result.append((pending.removeFirst(), reply))
            case .info:
                continue
            }
        }
        return result
    }

    public var sawAuthSuccess: Bool {
        serverLines.contains { $0.hasPrefix("235") }
    }
}

/// One SMTP reply line: `250-…` or `550 5.1.1 No such user`.
public struct SMTPReply: Sendable, Equatable, CustomStringConvertible {
    public var code: Int
    public var enhancedCode: String?
    public var isContinuation: Bool
    public var line: String

    public init?(_ line: String) {
        let bytes = Array(line.utf8)
        guard bytes.count >= 3, bytes[0...2].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let code = Int(String(decoding: bytes[0...2], as: UTF8.self)), (200...599).contains(code)
        else { return nil }
        self.code = code
        self.line = line
        self.isContinuation = bytes.count > 3 && bytes[3] == UInt8(ascii: "-")
        let rest = line.dropFirst(4)
        let first = rest.split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
        let parts = first.split(separator: ".")
        if parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isNumber) }),
            let klass = parts.first, ["2", "4", "5"].contains(klass)
        {
            self.enhancedCode = first
        } else {
            self.enhancedCode = nil
        }
    }

    public var isTemporary: Bool { (400..<500).contains(code) }
    public var isPermanent: Bool { code >= 500 }
    public var description: String { line }
}
