/// Turns what libcurl reported into a `DeliveryError`: a pure function of the CURLcode,
/// libcurl's error text, the last response code and the conversation, so every row of
/// NOTES.md's table is testable without a server.
public enum FailureClassifier {
    /// CURLcode values this code distinguishes (from curl/curl.h, stable across releases).
    enum Code {
        static let unsupportedProtocol = 1
        static let urlMalformat = 3
        static let couldntResolveProxy = 5
        static let couldntResolveHost = 6
        static let couldntConnect = 7
        static let weirdServerReply = 8
        static let partialFile = 18
        static let readError = 26
        static let operationTimedOut = 28
        static let sslConnectError = 35
        static let gotNothing = 52
        static let sendError = 55
        static let recvError = 56
        static let sslCertProblem = 58
        static let sslCipher = 59
        static let peerFailedVerification = 60
        static let useSSLFailed = 64
        static let loginDenied = 67
        static let sslCACertBadFile = 77
        static let sslShutdownFailed = 80
        static let sslIssuerError = 83
        static let sslPinnedPubKeyNotMatch = 90
        static let sslInvalidCertStatus = 91
    }

    static let tlsCodes: Set<Int> = [
        Code.sslConnectError, Code.sslCertProblem, Code.sslCipher, Code.peerFailedVerification,
        Code.useSSLFailed, Code.sslCACertBadFile, Code.sslShutdownFailed, Code.sslIssuerError,
        Code.sslPinnedPubKeyNotMatch, Code.sslInvalidCertStatus,
    ]

    /// `reusedConnection`: the send ran on a connection opened (and greeted) by an earlier
    /// one, whose conversation is not in `transcript`. Such a connection breaking, or falling
    /// silent, is a lost connection or a slow server, never a server we cannot reach.
    public static func classify(
        curlCode: Int, errorMessage: String, responseCode: Int, transcript: SMTPTranscript, reusedConnection: Bool = false
    ) -> DeliveryError {
        let reply = transcript.lastReply
        let heardServer = reusedConnection || !transcript.serverLines.isEmpty
        let curlText = errorMessage.isEmpty ? "libcurl error \(curlCode)" : errorMessage

        func fromReply(_ kind: DeliveryError.Kind) -> DeliveryError {
            // A 4xx is the server asking us to come back, whatever the step.
            let code = reply?.code ?? (responseCode > 0 ? responseCode : nil)
            let temporary = code.map { (400..<500).contains($0) } ?? (kind != .authFailed)
            return DeliveryError(
                kind: temporary && kind != .connectionFailed ? .temporaryFailure : kind,
                smtpCode: code, enhancedCode: reply?.enhancedCode,
                text: reply?.line ?? curlText, isTemporary: temporary)
        }
        func plain(_ kind: DeliveryError.Kind, temporary: Bool, text: String? = nil) -> DeliveryError {
            DeliveryError(kind: kind, text: text ?? curlText, isTemporary: temporary)
        }

        switch curlCode {
        case Code.couldntResolveHost, Code.couldntResolveProxy, Code.couldntConnect:
            return plain(.connectionFailed, temporary: false)
        case Code.urlMalformat, Code.unsupportedProtocol:
            return plain(.connectionFailed, temporary: false, text: "invalid host: \(curlText)")
        case Code.operationTimedOut:
            // Silence up to the greeting is ambiguous (SPEC §4): the breaker counts it. Silence
            // later is a slow server.
            return heardServer ? plain(.timeout, temporary: true) : plain(.connectTimeout, temporary: true)
        case _ where tlsCodes.contains(curlCode):
            return plain(.tlsFailed, temporary: false)
        case Code.loginDenied:
            return fromReply(.authFailed)
        case Code.sendError where errorMessage.hasPrefix("MAIL failed"):
            return fromReply(.fromRejected)
        case Code.sendError where errorMessage.hasPrefix("RCPT failed"):
            // Every recipient refused: permanent only if every refusal was (SPEC §4, "5xx for
            // every recipient"). A 4xx for one of them is that recipient asking us to come back,
            // whichever came last; failing on the last 550 would drop it.
            if let temporary = transcript.recipientReplies.last(where: { (400..<500).contains($0.reply.code) })?.reply {
                return DeliveryError(
                    kind: .temporaryFailure, smtpCode: temporary.code, enhancedCode: temporary.enhancedCode,
                    text: temporary.line, isTemporary: true)
            }
            return fromReply(.recipientRejected)
        case Code.weirdServerReply:
            return weirdReply(transcript: transcript, fromReply: fromReply)
        case Code.recvError, Code.gotNothing, Code.sendError, Code.readError, Code.partialFile:
            return heardServer
                ? plain(.connectionLost, temporary: true) : plain(.connectionFailed, temporary: false)
        default:
            if reply?.isPermanent == true, let reply {
                return DeliveryError(
                    kind: .unknown, smtpCode: reply.code, enhancedCode: reply.enhancedCode, text: reply.line,
                    isTemporary: false)
            }
            return plain(.unknown, temporary: true)
        }
    }

    /// CURLE_WEIRD_SERVER_REPLY: an unexpected reply code. Which step it answered decides.
    private static func weirdReply(
        transcript: SMTPTranscript, fromReply: (DeliveryError.Kind) -> DeliveryError
    ) -> DeliveryError {
        switch transcript.lastCommand {
        case nil, "EHLO", "HELO":
            return fromReply(.connectionFailed)
        case "STARTTLS":
            return fromReply(.tlsFailed)
        case "AUTH":
            return fromReply(.authFailed)
        case "MAIL":
            return fromReply(.fromRejected)
        case "RCPT":
            return fromReply(.recipientRejected)
        case "DATA", "BDAT":
            return fromReply(.messageRejected)
        default:
            return fromReply(.unknown)
        }
    }
}
