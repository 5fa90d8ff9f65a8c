import CCurl
import Foundation

/// One libcurl easy handle set up for one endpoint: the one place for the curl options of an
/// SMTP connection, the transcript the debug callback captures, and the mapping of what
/// libcurl reported to a `DeliveryError`. libcurl only connects, secures and logs in
/// (`CURLOPT_CONNECT_ONLY`); `SMTPTransaction` sends the message on the engine thread, and
/// `SMTPConnection.verify` QUITs.
/// It is not Sendable: one thread at a time, and never during a transfer on another.
final class SMTPEasyHandle {
    let endpoint: SMTPEndpoint
    let handle: UnsafeMutableRawPointer
    private let errorBuffer: UnsafeMutablePointer<CChar>
    let capture = TranscriptCapture()
    /// Set when the endpoint has a network policy: the addresses it refused this conversation.
    private let connectGuard: ConnectGuard?

    /// `connectOnly`: a transfer stops after greeting, EHLO, TLS and AUTH, and leaves the
    /// connection open for `curl_easy_send`/`curl_easy_recv` (no QUIT).
    init(endpoint: SMTPEndpoint, connectOnly: Bool = false) {
        _ = Curl.initialized
        self.endpoint = endpoint
        handle = curl_easy_init()!
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE))
        connectGuard = endpoint.networkPolicy.map(ConnectGuard.init)
        configure()
        if connectOnly { set(CURLOPT_CONNECT_ONLY, 1) }
    }

    deinit {
        // With the easy interface this QUITs an open connection politely; a handle that used a
        // share leaves its connections to the share.
        curl_easy_cleanup(handle)
        errorBuffer.deallocate()
    }

    var transcript: SMTPTranscript { capture.transcript }

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
        if let connectGuard {
            // After name resolution, before connect: the only point where the address libcurl is
            // about to use is known, so a name that resolves inward is caught however it resolved.
            _ = mr_curl_setopt_opensocket_function(handle, Curl.openSocketCallback)
            set(CURLOPT_OPENSOCKETDATA, Unmanaged.passUnretained(connectGuard).toOpaque())
        }
    }

    /// The connection cache this handle takes connections from and returns them to, when it
    /// runs in a multi handle. Set only while the handle is not in one.
    func setShare(_ share: UnsafeMutableRawPointer?) {
        _ = mr_curl_setopt_share(handle, share)
    }

    /// Starts a new conversation: no transcript, no error text.
    func resetConversation() {
        capture.transcript.reset()
        connectGuard?.refused = []
        errorBuffer[0] = 0
    }

    /// The socket of a connect-only connection.
    var activeSocket: curl_socket_t {
        var socket: curl_socket_t = -1
        _ = mr_curl_getinfo_socket(handle, &socket)
        return socket
    }

    /// The failure a non-zero CURLcode stands for, from libcurl's words and the conversation.
    func failure(_ code: Int, reusedConnection: Bool = false) -> DeliveryError {
        var response = 0
        _ = mr_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &response)
        let message = String(cString: errorBuffer)
        errorBuffer[0] = 0
        if let refused = connectGuard?.refused, !refused.isEmpty {
            // Nothing was connected: the address itself is the answer, and it will not change.
            return DeliveryError(kind: .connectionFailed, text: refused.joined(separator: "; "), isTemporary: false)
        }
        return FailureClassifier.classify(
            curlCode: code, errorMessage: message, responseCode: response, transcript: capture.transcript,
            reusedConnection: reusedConnection)
    }

    // MARK: - Options

    func set(_ option: CURLoption, _ value: Int) {
        _ = mr_curl_setopt_long(handle, option, value)
    }

    func set(_ option: CURLoption, _ value: String) {
        _ = mr_curl_setopt_string(handle, option, value)
    }

    func set(_ option: CURLoption, _ value: UnsafeMutableRawPointer?) {
        _ = mr_curl_setopt_pointer(handle, option, value)
    }
}

/// One try at sending a message, and whether the rule allows one more.
struct SendAttempt {
    var result: Result<SendReport, DeliveryError>
    /// Whether the transfer ran on a connection that was already open.
    var reused: Bool
    /// The verb of the last command sent, when the attempt ended.
    var lastCommand: String?

    /// A pooled connection the server closed while idle fails before DATA; one retry on a
    /// fresh connection cannot duplicate the message.
    var retryOnFreshConnection: Bool {
        guard case .failure(let error) = result else { return false }
        return reused && error.kind == .connectionLost && lastCommand != "DATA"
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

extension SendReport {
    /// What a successful send's conversation says: the final reply, and the recipients refused.
    init(_ transcript: SMTPTranscript, newConnection: Bool) {
        let refused = transcript.recipientReplies.filter { $0.reply.code >= 400 }
            .map { RefusedRecipient(address: $0.address, reply: $0.reply.line, temporary: $0.reply.isTemporary) }
        self.init(reply: transcript.lastReply, refused: refused, newConnection: newConnection)
    }
}

public struct RefusedRecipient: Sendable, Equatable, Codable {
    public var address: String
    public var reply: String
    public var temporary: Bool
}

/// What the open-socket callback needs, in a class so it can reach it through a pointer.
final class ConnectGuard {
    let policy: NetworkPolicy
    var refused: [String] = []

    init(policy: NetworkPolicy) {
        self.policy = policy
    }
}

/// The transcript lives in a class so libcurl's callback can reach it through a pointer.
final class TranscriptCapture {
    var transcript = SMTPTranscript()
}

/// C callbacks must not capture context; they live here as static lets (not top-level, which
/// Swift 6 would isolate to the main actor).
enum Curl {
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

    /// Opens the socket libcurl asks for unless the network policy refuses its address; a
    /// refused address makes libcurl try the next one, or fail with "couldn't connect".
    static let openSocketCallback: curl_opensocket_callback = { clientp, _, address in
        guard let clientp, let address else { return CURL_SOCKET_BAD }
        let connectGuard = Unmanaged<ConnectGuard>.fromOpaque(clientp).takeUnretainedValue()
        let target = withUnsafePointer(to: &address.pointee.addr) { IPAddress(sockaddr: $0) }
        if let target, let reason = connectGuard.policy.refusal(of: target) {
            if !connectGuard.refused.contains(reason) { connectGuard.refused.append(reason) }
            return CURL_SOCKET_BAD
        }
        return socket(address.pointee.family, address.pointee.socktype, address.pointee.protocol)
    }
}
