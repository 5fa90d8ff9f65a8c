import Foundation
import Hummingbird
import MailrouteCore

extension MessageSubmission {
    /// SPEC §3's columns an enqueuer writes, and the attachments.
    static let keys: Set<String> = [
        "tenant", "advertiser", "cname", "category", "priority", "send_at", "expires_at", "mail_from", "from_name", "reply_to",
        "rcpt_to", "cc", "bcc", "subject", "text_body", "html_body", "headers", "idempotency_key", "attachments",
    ]
}

/// `/v1/messages` and `/v1/stats`, as `mailroutectl enqueue` and `queue`.
struct MessagesAPI {
    /// Built per request over the settings as last reloaded.
    let queue: @Sendable () -> QueueService
    let bodyLimit: Int

    func register(on group: RouterGroup<BasicRequestContext>) {
        group.post("messages") { request, _ in
            let submission = try await APIInput.decode(MessageSubmission.self, from: request, limit: bodyLimit, keys: MessageSubmission.keys)
            let id = try await queue().enqueue(submission)
            return try JSONResponse.object(["id": id], status: .created)
        }
        group.get("messages") { request, _ in
            try APIInput.onlyQuery(request, ["tenant", "status", "config", "route", "since", "domain", "limit"])
            func text(_ name: String) -> String? { APIInput.query(request, name) }
            let filter = try MessageFilter(
                tenant: text("tenant"), status: text("status"), config: text("config"), route: text("route"), since: text("since"),
                domain: text("domain"), limit: text("limit"))
            return try JSONResponse.make(try await queue().messages(filter))
        }
        group.get("messages/{id}") { _, context in
            try JSONResponse.make(try await queue().message(id: try id(context)))
        }
        group.post("messages/{id}/retry") { _, context in
            let id = try id(context)
            try await queue().retry(id: id)
            return try JSONResponse.object(["requeued": 1])
        }
        group.post("messages/{id}/cancel") { _, context in
            let id = try id(context)
            try await queue().cancel(id: id)
            return try JSONResponse.object(["cancelled": id])
        }
        group.get("stats") { _, _ in
            try JSONResponse.make(try await queue().stats())
        }
    }

    private func id(_ context: BasicRequestContext) throws -> Int64 {
        guard let text = context.parameters.get("id"), let id = Int64(text), id > 0 else {
            throw APIError.invalid("id", "must be a positive message id")
        }
        return id
    }
}
