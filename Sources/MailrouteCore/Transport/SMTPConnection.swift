import CCurl
import Foundation

/// One libcurl easy handle: one SMTP connection, reused across sends until it is closed.
///
/// Every call blocks, so a connection belongs to one dedicated thread, never to Swift's
/// cooperative pool. It is not Sendable on purpose.
public final class SMTPConnection {
    public let endpoint: SMTPEndpoint
    private let handle: UnsafeMutableRawPointer
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private let capture = TranscriptCapture()

    public init(endpoint: SMTPEndpoint) {
        _ = Curl.initialized
        self.endpoint = endpoint
        handle = curl_easy_init()!
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        configure()
    }

    deinit {
        // Cleanup QUITs an open connection politely.
        curl_easy_cleanup(handle)
        errorBuffer.deallocate()
    }

    /// What the last call said and heard, with credentials redacted.
    public var transcript: SMTPTranscript { capture.transcript }

    private func configure() {
        set(CURLOPT_URL, endpoint.url)
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_ERRORBUFFER, UnsafeMutableRawPointer(errorBuffer))
        set(CURLOPT_CONNECTTIMEOUT_MS, Int(endpoint.connectTimeoutSeconds * 1000))
        set(CURLOPT_SERVER_RESPONSE_TIMEOUT, max(1, Int(endpoint.commandTimeoutSeconds.rounded(.up))))
        // A server that stops reading our DATA is caught here, not by a reply timeout.
        set(CURLOPT_LOW_SPEED_LIMIT, 1)
        set(CURLOPT_LOW_SPEED_TIME, max(1, Int(endpoint.commandTimeoutSeconds.rounded(.up))))
        set(CURLOPT_MAXAGE_CONN, max(1, Int(endpoint.maxIdleSeconds)))
        switch endpoint.security {
        case .starttls: set(CURLOPT_USE_SSL, Int(CURLUSESSL_ALL.rawValue))
        case .tls: break
        case .none: set(CURLOPT_USE_SSL, Int(CURLUSESSL_NONE.rawValue))
        }
        if let caFile = endpoint.caFile { set(CURLOPT_CAINFO, caFile) }
        if let username = endpoint.username {
            set(CURLOPT_USERNAME, username)
            set(CURLOPT_PASSWORD, endpoint.password ?? "")
        }
        // The debug callback only fires in verbose mode; it is our only view of the replies.
        set(CURLOPT_VERBOSE, 1)
        _ = mr_curl_setopt_debug_function(handle, Curl.debugCallback)
        set(CURLOPT_DEBUGDATA, Unmanaged.passUnretained(capture).toOpaque())
    }

    /// Greeting, EHLO, STARTTLS or implicit TLS, AUTH, QUIT; sends no mail.
    public func verify() -> Result<Void, DeliveryError> {
        capture.transcript.reset()
        set(CURLOPT_CONNECT_ONLY, 1)
        let code = Int(curl_easy_perform(handle).rawValue)
        if code != 0 { return .failure(failure(code)) }
        // libcurl stops after AUTH in connect-only mode and would just close the socket.
        quitConnectOnly()
        // libcurl skips AUTH silently when the server does not offer it.
        if endpoint.username != nil && !capture.transcript.sawAuthSuccess {
            return .failure(
                DeliveryError(
                    kind: .authFailed,
                    text: "the server offered no AUTH mechanism\(endpoint.security == .none ? " (it may require TLS first)" : ""), so the credentials were not accepted",
                    isTemporary: false))
        }
        return .success(())
    }

    private func quitConnectOnly() {
        let quit = Array("QUIT\r\n".utf8)
        var sent = 0
        guard quit.withUnsafeBytes({ curl_easy_send(handle, $0.baseAddress, $0.count, &sent) }) == CURLE_OK else { return }
        capture.transcript.append(.client, chunk: "QUIT")
        var socket: curl_socket_t = -1
        _ = mr_curl_getinfo_socket(handle, &socket)
        var buffer = [UInt8](repeating: 0, count: 512)
        let deadline = Date().addingTimeInterval(min(2, endpoint.commandTimeoutSeconds))
        while Date() < deadline {
            var received = 0
            let code = buffer.withUnsafeMutableBytes { curl_easy_recv(handle, $0.baseAddress, $0.count, &received) }
            if code == CURLE_OK {
                if received > 0 {
                    capture.transcript.append(.server, chunk: String(decoding: buffer[..<received], as: UTF8.self))
                }
                return
            }
            guard code == CURLE_AGAIN, socket >= 0 else { return }
            var fds = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            _ = poll(&fds, 1, 100)
        }
    }

    /// Sends one message. `data` is the complete RFC 5322 message with CRLF line ends.
    public func send(from sender: String, to recipients: [String], data: [UInt8]) -> Result<SendReport, DeliveryError> {
        let first = attemptSend(from: sender, to: recipients, data: data)
        // A pooled connection the server closed while idle fails before DATA; one retry on a
        // fresh connection cannot duplicate the message.
        if case .failure(let error) = first.result, first.reused, error.kind == .connectionLost,
            capture.transcript.lastCommand != "DATA"
        {
            return attemptSend(from: sender, to: recipients, data: data).result
        }
        return first.result
    }

    private func attemptSend(
        from sender: String, to recipients: [String], data: [UInt8]
    ) -> (result: Result<SendReport, DeliveryError>, reused: Bool) {
        capture.transcript.reset()
        let upload = UploadSource(data)
        var list: UnsafeMutablePointer<curl_slist>?
        for recipient in recipients { list = curl_slist_append(list, "<\(recipient)>") }
        defer { curl_slist_free_all(list) }

        set(CURLOPT_MAIL_FROM, "<\(sender)>")
        _ = mr_curl_setopt_slist(handle, CURLOPT_MAIL_RCPT, list)
        set(mr_curl_opt_mail_rcpt_allowfails(), 1)
        set(CURLOPT_UPLOAD, 1)
        set(CURLOPT_INFILESIZE_LARGE, data.count)
        _ = mr_curl_setopt_read_function(handle, Curl.readCallback)
        set(CURLOPT_READDATA, Unmanaged.passUnretained(upload).toOpaque())
        let code = withExtendedLifetime(upload) { Int(curl_easy_perform(handle).rawValue) }
        _ = mr_curl_setopt_slist(handle, CURLOPT_MAIL_RCPT, nil)
        set(CURLOPT_READDATA, UnsafeMutableRawPointer?.none)

        var connects = 0
        _ = mr_curl_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects)
        let reused = connects == 0
        if code != 0 { return (.failure(failure(code)), reused) }

        let transcript = capture.transcript
        let refused = transcript.recipientReplies.filter { $0.reply.code >= 400 }
            .map { RefusedRecipient(address: $0.address, reply: $0.reply.line, temporary: $0.reply.isTemporary) }
        let report = SendReport(reply: transcript.lastReply, refused: refused, newConnection: !reused)
        return (.success(report), reused)
    }

    private func failure(_ code: Int) -> DeliveryError {
        var response = 0
        _ = mr_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &response)
        let message = String(cString: errorBuffer)
        errorBuffer[0] = 0
        return FailureClassifier.classify(
            curlCode: code, errorMessage: message, responseCode: response, transcript: capture.transcript)
    }

    private func set(_ option: CURLoption, _ value: Int) {
        _ = mr_curl_setopt_long(handle, option, value)
    }

    private func set(_ option: CURLoption, _ value: String) {
        _ = mr_curl_setopt_string(handle, option, value)
    }

    private func set(_ option: CURLoption, _ value: UnsafeMutableRawPointer?) {
        _ = mr_curl_setopt_pointer(handle, option, value)
    }
}

public struct SendReport: Sendable, Equatable {
    /// The server's reply to the end of DATA (`250 2.0.0 Ok: queued as 4XYZ`).
    public var reply: SMTPReply?
    /// Recipients the server refused while accepting the others.
    public var refused: [RefusedRecipient]
    /// Whether this send opened a new connection rather than reusing one.
    public var newConnection: Bool
}

public struct RefusedRecipient: Sendable, Equatable, Codable {
    public var address: String
    public var reply: String
    public var temporary: Bool
}

/// The transcript lives in a class so libcurl's callback can reach it through a pointer.
private final class TranscriptCapture {
    var transcript = SMTPTranscript()
}

private final class UploadSource {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}

/// C callbacks must not capture context; they live here as static lets (not top-level, which
/// Swift 6 would isolate to the main actor).
private enum Curl {
    static let initialized: Bool = {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    }()

    static let debugCallback: mr_curl_debug_callback = { _, type, data, size, userdata in
        guard let data, let userdata else { return 0 }
        let direction: SMTPTranscript.Direction
        switch type {
        case CURLINFO_HEADER_IN: direction = .server
        case CURLINFO_HEADER_OUT: direction = .client
        case CURLINFO_TEXT: direction = .info
        default: return 0  // message data and TLS records stay out of the transcript
        }
        let capture = Unmanaged<TranscriptCapture>.fromOpaque(userdata).takeUnretainedValue()
        let chunk = String(decoding: UnsafeRawBufferPointer(start: data, count: size), as: UTF8.self)
        capture.transcript.append(direction, chunk: chunk)
        return 0
    }

    static let readCallback: mr_curl_read_callback = { buffer, size, count, userdata in
        guard let buffer, let userdata else { return 0 }
        let source = Unmanaged<UploadSource>.fromOpaque(userdata).takeUnretainedValue()
        let n = min(size * count, source.bytes.count - source.offset)
        guard n > 0 else { return 0 }
        source.bytes.withUnsafeBufferPointer { bytes in
            UnsafeMutableRawPointer(buffer).copyMemory(from: bytes.baseAddress! + source.offset, byteCount: n)
        }
        source.offset += n
        return n
    }
}
