/// One message over an SMTP connection that libcurl has opened, secured and logged in
/// (`CURLOPT_CONNECT_ONLY`): MAIL FROM, a RCPT TO for each recipient, DATA, the dot-stuffed
/// message and its end, as libcurl 7.88's own SMTP transfer sends them (lib/smtp.c), but as a
/// state machine without I/O. The multi-interface engine needs that: libcurl's `smtp_done`
/// waits for the reply to the end of DATA with a blocking poll loop (`smtp_block_statemach`)
/// inside `curl_multi_perform`, so one server slow to answer would stall every pool.
///
/// A failure comes out as the CURLcode and error text libcurl reports for it, so that
/// `FailureClassifier` stays the one place that turns them into a `DeliveryError`.
struct SMTPTransaction {
    /// What the server's EHLO reply offered, as far as MAIL FROM cares.
    struct Capabilities: Equatable {
        var size = false
        var smtputf8 = false
        /// RFC 2920: MAIL, the RCPTs and DATA go out together, which halves the round trips
        /// per message (four to two with one recipient).
        var pipelining = false

        init(size: Bool = false, smtputf8: Bool = false, pipelining: Bool = false) {
            self.size = size
            self.smtputf8 = smtputf8
            self.pipelining = pipelining
        }

        /// From the conversation so far: the reply to its last EHLO.
        init(_ transcript: SMTPTranscript) {
            guard let ehlo = transcript.lines.lastIndex(where: { $0.direction == .client && $0.text.uppercased().hasPrefix("EHLO") })
            else { return }
            for line in transcript.lines[ehlo...] where line.direction == .server {
                guard line.text.count > 4, line.text.hasPrefix("250") else { continue }
                let keyword = line.text.dropFirst(4).split(separator: " ").first?.uppercased() ?? ""
                if keyword == "SIZE" { size = true }
                if keyword == "SMTPUTF8" { smtputf8 = true }
                if keyword == "PIPELINING" { pipelining = true }
            }
        }
    }

    enum Event: Equatable {
        /// Bytes to write to the server; then wait for its reply.
        case send([UInt8])
        /// A reply is not complete yet.
        case wait
        case finished(Outcome)
    }

    enum Outcome: Equatable {
        case accepted
        /// What libcurl would have said: its CURLcode, error text and last response code.
        case failed(curlCode: Int, message: String, responseCode: Int)
    }

    enum Step: Equatable {
        case mail, rcpt(Int), data, body, done
    }

    /// CURLcodes libcurl uses for these (curl/curl.h).
    enum Code {
        static let weirdServerReply = 8
        static let operationTimedOut = 28
        static let sendError = 55
        static let recvError = 56
    }

    let sender: String
    let recipients: [String]
    let message: [UInt8]
    let capabilities: Capabilities
    private(set) var step: Step = .mail
    private var partial: [UInt8] = []
    private var acceptedRecipients = 0
    private var lastRecipientError = 0
    /// Pipelined commands not answered yet. Each enters the transcript when its reply starts,
    /// so the transcript reads as the lock-step conversation its readers expect (a RCPT line,
    /// then its reply) and names the last command the server answered.
    private var ahead: [String] = []
    private var replyStarted = false
    /// Complete replies heard: each one restarts the command timeout (RFC 5321 §4.5.3.2 times
    /// each command; in a pipeline only DATA's reply asks for the next write).
    private(set) var replies = 0

    /// Pipelined commands are still unanswered: after a refusal the connection is out of step
    /// and is closed rather than reused or QUIT (the server may even be reading a message).
    var owesReplies: Bool { !ahead.isEmpty }

    init(from sender: String, to recipients: [String], message: [UInt8], capabilities: Capabilities) {
        self.sender = sender
        self.recipients = recipients
        self.message = message
        self.capabilities = capabilities
    }

    /// The first command.
    mutating func begin(_ transcript: inout SMTPTranscript) -> [UInt8] {
        step = .mail
        var command = "MAIL FROM:<\(sender)>"
        if capabilities.size && !message.isEmpty { command += " SIZE=\(message.count)" }
        if capabilities.smtputf8 && ([sender] + recipients).contains(where: { !$0.utf8.allSatisfy { $0 < 0x80 } }) {
            command += " SMTPUTF8"
        }
        guard pipelining else { return self.command(command, &transcript) }
        ahead = [command] + recipients.map { "RCPT TO:<\($0)>" } + ["DATA"]
        return Array(ahead.map { $0 + "\r\n" }.joined().utf8)
    }

    /// Takes what the server sent; at most one event per complete reply, the last one wins
    /// (a server speaks only when spoken to), and nothing after the one that finishes the send.
    mutating func receive(_ bytes: some Sequence<UInt8>, _ transcript: inout SMTPTranscript) -> Event {
        var event = Event.wait
        for byte in bytes {
            partial.append(byte)
            guard byte == UInt8(ascii: "\n") else { continue }
            var line = partial
            partial.removeAll(keepingCapacity: true)
            while let last = line.last, last == UInt8(ascii: "\n") || last == UInt8(ascii: "\r") { line.removeLast() }
            let text = String(decoding: line, as: UTF8.self)
            if !replyStarted, !ahead.isEmpty { transcript.append(.client, chunk: ahead.removeFirst()) }
            replyStarted = true
            transcript.append(.server, chunk: text)
            guard let code = Self.finalCode(line) else { continue }
            replyStarted = false
            replies += 1
            guard case .wait = event else { continue }
            event = reply(code, &transcript)
            // The end: what follows (replies a refused pipeline still owed) is not this send's,
            // and must not become its last reply.
            if case .finished = event { return event }
        }
        return event
    }

    /// The reply code of a final reply line (`250 ok`, or a bare `250`); nil for a `250-`
    /// continuation or anything else, as libcurl's smtp_endofresp decides.
    static func finalCode(_ line: [UInt8]) -> Int? {
        guard line.count >= 3, line[0...2].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        guard line.count == 3 || line[3] == UInt8(ascii: " ") else { return nil }
        return Int(line[0] - 0x30) * 100 + Int(line[1] - 0x30) * 10 + Int(line[2] - 0x30)
    }

    private var pipelining: Bool { capabilities.pipelining && !recipients.isEmpty }

    private mutating func reply(_ code: Int, _ transcript: inout SMTPTranscript) -> Event {
        switch step {
        case .mail:
            guard code / 100 == 2 else { return fail(Code.sendError, "MAIL failed: \(code)", code) }
            return nextRecipient(0, &transcript)
        case .rcpt(let index):
            if code / 100 == 2 {
                acceptedRecipients += 1
            } else {
                lastRecipientError = code
            }
            if index + 1 < recipients.count { return nextRecipient(index + 1, &transcript) }
            guard acceptedRecipients > 0 else {
                return fail(Code.sendError, "RCPT failed: \(lastRecipientError) (last error)", code)
            }
            step = .data
            // In a pipeline DATA went out with MAIL; a refusal above ended it with replies owed.
            return pipelining ? .wait : .send(command("DATA", &transcript))
        case .data:
            guard code == 354 else { return fail(Code.sendError, "DATA failed: \(code)", code) }
            step = .body
            return .send(Self.stuffed(message))
        case .body:
            step = .done
            // libcurl fails anything but 250 here without a message of its own.
            return code == 250 ? .finished(.accepted) : fail(Code.weirdServerReply, "", code)
        case .done:
            return .wait
        }
    }

    private mutating func nextRecipient(_ index: Int, _ transcript: inout SMTPTranscript) -> Event {
        guard index < recipients.count else { return fail(Code.sendError, "RCPT failed: no recipients", 0) }
        step = .rcpt(index)
        // In a pipeline the RCPTs went out with MAIL: nothing more until DATA's reply.
        return pipelining ? .wait : .send(command("RCPT TO:<\(recipients[index])>", &transcript))
    }

    private mutating func fail(_ code: Int, _ message: String, _ response: Int) -> Event {
        step = .done
        return .finished(.failed(curlCode: code, message: message, responseCode: response))
    }

    private func command(_ text: String, _ transcript: inout SMTPTranscript) -> [UInt8] {
        transcript.append(.client, chunk: text)
        return Array((text + "\r\n").utf8)
    }

    /// The message with every line that starts with "." given one more, and the end of data:
    /// ".\r\n" after a final CRLF, "\r\n.\r\n" otherwise (lib/smtp.c, Curl_smtp_escape_eob).
    /// Copies the runs between lines that start with "." whole: byte by byte this was 2 % of
    /// the daemon's CPU (perf), for messages that mostly have no such line.
    static func stuffed(_ message: [UInt8]) -> [UInt8] {
        let dot = UInt8(ascii: ".")
        var out: [UInt8] = []
        out.reserveCapacity(message.count + 16)
        message.withUnsafeBufferPointer { m in
            let n = m.count
            var copied = 0
            if n > 0 && m[0] == dot { out.append(dot) }
            var i = 0
            while i + 2 < n {
                if m[i + 2] == dot && m[i + 1] == 10 && m[i] == 13 {
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: m[copied..<(i + 2)]))
                    out.append(dot)
                    copied = i + 2
                    i += 3
                } else {
                    i += 1
                }
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: m[copied..<n]))
        }
        if message.isEmpty || message.suffix(2).elementsEqual([13, 10]) {
            out += Array(".\r\n".utf8)
        } else {
            out += Array("\r\n.\r\n".utf8)
        }
        return out
    }
}
