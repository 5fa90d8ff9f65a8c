import CCurl
import Foundation

/// One libcurl easy handle for `verify` (greeting, EHLO, TLS, AUTH, QUIT): mailroutectl's
/// `config verify` and the daemon's probes. Mail is sent only through `CurlMultiTransport`.
///
/// Every call blocks, so a connection belongs to one dedicated thread, never to Swift's
/// cooperative pool. It is not Sendable on purpose.
public final class SMTPConnection {
    public let endpoint: SMTPEndpoint
    private let easy: SMTPEasyHandle
    private var handle: UnsafeMutableRawPointer { easy.handle }
    private var capture: TranscriptCapture { easy.capture }

    public init(endpoint: SMTPEndpoint) {
        self.endpoint = endpoint
        easy = SMTPEasyHandle(endpoint: endpoint)
    }

    /// What the last call said and heard, with credentials redacted.
    public var transcript: SMTPTranscript { capture.transcript }

    /// Greeting, EHLO, STARTTLS or implicit TLS, AUTH, QUIT; sends no mail.
    public func verify() -> Result<Void, DeliveryError> {
        capture.transcript.reset()
        easy.set(CURLOPT_CONNECT_ONLY, 1)
        let code = Int(curl_easy_perform(handle).rawValue)
        if code != 0 { return .failure(easy.failure(code)) }
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

}
