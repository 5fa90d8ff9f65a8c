import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@testable import MailrouteAPI
@testable import MailrouteCore

/// The API's rules in process (HummingbirdTesting's router mode, a real SQLite queue): auth,
/// the error codes and bodies, the body limit, and that the committed OpenAPI document and the
/// router describe the same endpoints. `APIDaemonTests` does the same over real sockets.
@Suite struct APIRouterTests {
    static let token = "router-test-token-0123456789"
    let settings: MailrouteConfiguration
    let store: QueueStore

    init() throws {
        let dir = Paths.temporaryDirectory("api-router")
        var settings = MailrouteConfiguration()
        settings.queue.path = dir.appendingPathComponent("q.db").path
        settings.secrets.keyFile = dir.appendingPathComponent("key").path
        settings.dkim.keysDirectory = dir.appendingPathComponent("dkim").path
        settings.delivery.allowedNetworks = [IPNetwork("127.0.0.0/8")!]
        settings.api.maxBodyBytes = 4096
        try KeyFile.generate(at: settings.secrets.keyFile)
        self.settings = settings
        store = try QueueStore(path: settings.queue.path)
    }

    func withClient(_ body: @escaping @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let service = APIService(
            settings: CurrentSettings(settings), store: store, tokens: APITokens([Self.token]), metrics: { Array("mailroute_up 1\n".utf8) },
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try await Application(router: service.router()).test(.router) { client in try await body(client) }
    }

    struct Reply {
        var status: HTTPResponse.Status
        var text: String
        var json: Any? { try? JSONSerialization.jsonObject(with: Data(text.utf8)) }
        var object: [String: Any] { json as? [String: Any] ?? [:] }
        var error: [String: Any] { object["error"] as? [String: Any] ?? [:] }
    }

    func call(
        _ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil,
        token: String? = token
    ) async throws -> Reply {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        if body != nil { headers[.contentType] = "application/json" }
        return try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
            Reply(status: response.status, text: String(buffer: response.body))
        }
    }

    static let acme = #"{"tenant":"acme","name":"main","host":"127.0.0.1","port":2526,"security":"none","from_address":"a@acme.test"}"#

    @Test func everyV1RequestNeedsAValidBearerTokenAndGetsNoHint() async throws {
        try await withClient { client in
            for token in [nil, "wrong-token-0123456789", Self.token + "x", String(Self.token.dropLast())] {
                let reply = try await call(client, .get, "/v1/stats", token: token)
                #expect(reply.status == .unauthorized)
                #expect(reply.error["message"] as? String == "a valid bearer token is required")
            }
            var headers: HTTPFields = [:]
            headers[.authorization] = "Basic \(Self.token)"
            let basic = try await client.execute(uri: "/v1/stats", method: .get, headers: headers) { $0.status }
            #expect(basic == .unauthorized)
            #expect(try await call(client, .get, "/v1/stats").status == .ok)
            // A path that does not exist under /v1 says nothing either, until the token is right.
            #expect(try await call(client, .get, "/v1/nope", token: nil).status == .unauthorized)
            #expect(try await call(client, .delete, "/v1/stats", token: nil).status == .unauthorized)
            #expect(try await call(client, .get, "/v1/nope").status == .notFound)
            // The document and the metrics need none (metrics_auth is off).
            #expect(try await call(client, .get, "/openapi.json", token: nil).status == .ok)
            #expect(try await call(client, .get, "/metrics", token: nil).status == .ok)
        }
    }

    @Test func configurationLifecycleAndTheRulesStatusCodes() async throws {
        try await withClient { client in
            let added = try await call(client, .post, "/v1/configurations", Self.acme)
            #expect(added.status == .created, "\(added.text)")
            #expect(added.object["status"] as? String == "not_verified")
            #expect(try await call(client, .post, "/v1/configurations", Self.acme).status == .conflict)
            let second = Self.acme.replacingOccurrences(of: #""name":"main""#, with: #""name":"backup""#)
            #expect(try await call(client, .post, "/v1/configurations", second).status == .created)
            // SPEC §2: the default goes last, and cannot be disabled.
            let deleteDefault = try await call(client, .delete, "/v1/configurations/acme/main")
            #expect(deleteDefault.status == .unprocessableContent, "\(deleteDefault.text)")
            #expect(deleteDefault.error["code"] as? String == "rule")
            #expect(try await call(client, .post, "/v1/configurations/acme/main/disable").status == .unprocessableContent)
            #expect(try await call(client, .post, "/v1/configurations/acme/backup/default").object["default"] as? String == "acme/backup")
            let edited = try await call(client, .patch, "/v1/configurations/acme/main", #"{"port":2600,"from_name":"Acme"}"#)
            #expect(edited.status == .ok)
            #expect(edited.object["port"] as? Int == 2600)
            #expect(try await call(client, .get, "/v1/configurations?tenant=acme").json as? [Any] != nil)
            #expect(try await call(client, .get, "/v1/configurations/acme/nope").status == .notFound)
            let deleted = try await call(client, .delete, "/v1/configurations/acme/main")
            #expect(deleted.object["deleted"] as? String == "acme/main")
        }
    }

    @Test func everyBadInputIsA400NamingTheField() async throws {
        try await withClient { client in
            let cases: [(HTTPRequest.Method, String, String?, String)] = [
                (.post, "/v1/configurations", #"{"tenant":"acme","name":"m","host":"127.0.0.1","from_adress":"a@acme.test"}"#, "from_adress"),
                (.post, "/v1/configurations", #"{"tenant":"acme","name":"m","host":"127.0.0.1"}"#, "from_address"),
                (.post, "/v1/configurations", #"{"tenant":"acme","name":"m","host":"127.0.0.1","from_address":"a@acme.test","port":"25"}"#, "port"),
                (.post, "/v1/configurations", #"{"tenant":"acme","name":"m","host":"127.0.0.1","from_address":"a@acme.test","port":70000}"#, "port"),
                (.post, "/v1/configurations", #"{"tenant":"acme","name":"m","host":"127.0.0.1","from_address":"a@acme.test","security":"ssl"}"#, "security"),
                (.post, "/v1/configurations", #"{"tenant":"acme","name":"m","host":"10.0.0.1","from_address":"a@acme.test"}"#, "host"),
                (.post, "/v1/configurations", "[1]", "body"),
                (.post, "/v1/configurations", "{", "body"),
                (.post, "/v1/messages", #"{"category":"report","rcpt_to":["a@x.test","not an address"],"subject":"s","text_body":"t"}"#, "rcpt_to[1]"),
                (.post, "/v1/messages", #"{"category":"report","rcpt_to":[],"subject":"s","text_body":"t"}"#, "rcpt_to"),
                (.post, "/v1/messages", #"{"category":"report","rcpt_to":["a@x.test"],"subject":"s"}"#, "text_body"),
                (.post, "/v1/messages", #"{"category":"report","rcpt_to":["a@x.test"],"subject":"s","text_body":"t","priority":9}"#, "priority"),
                (.post, "/v1/messages", #"{"category":"Bad Name","rcpt_to":["a@x.test"],"subject":"s","text_body":"t"}"#, "category"),
                (.post, "/v1/messages", #"{"category":"report","rcpt_to":["a@x.test"],"subject":"s","text_body":"t","status":"sent"}"#, "status"),
                (.post, "/v1/messages", #"{"category":"report","rcpt_to":["a@x.test"],"subject":"s","text_body":"t","attachments":[{"filename":"a"}]}"#, "attachments[0].content_base64"),
                (.get, "/v1/messages/abc", nil, "id"),
                (.get, "/v1/messages?colour=red", nil, "colour"),
                (.put, "/v1/routes", #"{"tenant":"acme","kind":"planet","key":"k","config":"main"}"#, "kind"),
                (.post, "/v1/configurations/acme/main/test", #"{"to":"nobody"}"#, "to"),
            ]
            _ = try await call(client, .post, "/v1/configurations", Self.acme)
            for (method, uri, body, field) in cases {
                let reply = try await call(client, method, uri, body)
                #expect(reply.status == .badRequest, "\(method) \(uri) \(body ?? ""): \(reply.status) \(reply.text)")
                #expect(reply.error["field"] as? String == field, "\(uri) \(body ?? ""): \(reply.text)")
                #expect((reply.error["message"] as? String)?.isEmpty == false)
            }
        }
    }

    @Test func aBodyOverTheLimitIs413AndNothingIsQueued() async throws {
        try await withClient { client in
            let big = String(repeating: "x", count: 8000)
            let reply = try await call(client, .post, "/v1/messages", #"{"category":"report","rcpt_to":["a@x.test"],"subject":"s","text_body":"\#(big)"}"#)
            #expect(reply.status == .contentTooLarge)
            #expect(reply.error["code"] as? String == "too_large")
            #expect(try await store.counts(now: QueueStore.now()).queued == 0)
        }
    }

    @Test func enqueueIdempotencyAndTheMessageResources() async throws {
        try await withClient { client in
            let body = #"{"tenant":"acme","category":"report","rcpt_to":["Bob <b@x.test>"],"cc":["c@x.test"],"subject":"s","text_body":"t","headers":{"X-Campaign":"7"},"idempotency_key":"k-1","attachments":[{"filename":"a.txt","content_base64":"aGVsbG8="}]}"#
            let first = try await call(client, .post, "/v1/messages", body)
            #expect(first.status == .created, "\(first.text)")
            let id = try #require(first.object["id"] as? Int)
            let again = try await call(client, .post, "/v1/messages", body)
            #expect(again.status == .conflict)
            #expect(again.object["id"] as? Int == id, "SPEC §9: 409 names the message that has the key")
            let shown = try await call(client, .get, "/v1/messages/\(id)")
            #expect(shown.object["rcpt_to"] as? [String] == ["Bob <b@x.test>"])
            #expect(shown.object["headers"] as? [String: String] == ["X-Campaign": "7"])
            #expect((shown.object["attachments"] as? [[String: Any]])?.first?["size"] as? Int == 5)
            #expect(try await call(client, .get, "/v1/messages/999999").status == .notFound)
            #expect(try await call(client, .post, "/v1/messages/\(id)/retry").status == .conflict, "a queued message is not retried")
            #expect(try await call(client, .post, "/v1/messages/\(id)/cancel").object["cancelled"] as? Int == id)
            #expect(try await call(client, .post, "/v1/messages/\(id)/cancel").status == .conflict)
            #expect(try await call(client, .post, "/v1/messages/\(id)/retry").object["requeued"] as? Int == 1)
            #expect(try await call(client, .post, "/v1/messages/999999/cancel").status == .notFound)
            #expect(try await call(client, .get, "/v1/stats").object["queued"] as? Int == 1)
        }
    }

    /// GET /v1/messages takes the trace's filters (MessageFilter, as `queue list`): each narrows
    /// the list, and a bad one is a 400 naming the parameter.
    @Test func theMessageTraceFilters() async throws {
        try await withClient { client in
            for (tenant, to) in [("acme", "ann@x.test"), ("acme", "bob@y.test"), ("zeta", "cy@x.test")] {
                let reply = try await call(client, .post, "/v1/messages", #"{"tenant":"\#(tenant)","category":"report","rcpt_to":["\#(to)"],"subject":"s","text_body":"t"}"#)
                #expect(reply.status == .created)
            }
            func ids(_ query: String) async throws -> Int? { (try await call(client, .get, "/v1/messages?\(query)").json as? [Any])?.count }
            #expect(try await ids("") == 3)
            #expect(try await ids("tenant=acme") == 2)
            #expect(try await ids("domain=x.test") == 2)
            #expect(try await ids("tenant=acme&domain=X.TEST") == 1)
            #expect(try await ids("since=1h&limit=2") == 2)
            #expect(try await ids("status=sent") == 0)
            #expect(try await ids("route=fallback") == 0)
            for (query, field) in [("since=yesterday", "since"), ("config=acme", "config"), ("route=sideways", "route"), ("limit=0", "limit"), ("status=lost", "status")] {
                let reply = try await call(client, .get, "/v1/messages?\(query)")
                #expect(reply.status == .badRequest, "\(query): \(reply.text)")
                #expect(reply.error["field"] as? String == field, "\(query): \(reply.text)")
            }
        }
    }

    @Test func thePasswordIsWriteOnly() async throws {
        let password = "s3cret-horse-battery"
        try await withClient { client in
            let body = Self.acme.replacingOccurrences(of: "}", with: #","username":"alice","password":"\#(password)"}"#)
            var replies = [try await call(client, .post, "/v1/configurations", body)]
            #expect(replies[0].object["has_password"] as? Bool == true)
            replies.append(try await call(client, .get, "/v1/configurations"))
            replies.append(try await call(client, .get, "/v1/configurations/acme/main"))
            replies.append(try await call(client, .patch, "/v1/configurations/acme/main", #"{"password":"bad\nline"}"#))
            replies.append(try await call(client, .post, "/v1/configurations/acme/main/verify"))
            for reply in replies { #expect(!reply.text.contains(password) && !reply.text.contains("bad\\nline"), "\(reply.text)") }
            #expect(replies[3].status == .badRequest)
            #expect(replies[3].error["field"] as? String == "password")
        }
    }

    @Test func routesAndResolve() async throws {
        try await withClient { client in
            _ = try await call(client, .post, "/v1/configurations", Self.acme)
            let set = try await call(client, .put, "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"adv-9","config":"main"}"#)
            #expect(set.status == .ok, "\(set.text)")
            #expect(set.object["config"] as? String == "acme/main")
            #expect((try await call(client, .get, "/v1/routes?tenant=acme").json as? [[String: Any]])?.count == 1)
            let resolved = try await call(client, .get, "/v1/routes/resolve?tenant=acme&advertiser=adv-9")
            #expect(resolved.object["route"] as? String == "advertiser")
            #expect(resolved.object["config"] as? String == "acme/main")
            let other = try await call(client, .put, "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"adv-9","config":"zeta/main"}"#)
            #expect(other.error["field"] as? String == "config")
            #expect(try await call(client, .delete, "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"adv-9"}"#).status == .ok)
            #expect((try await call(client, .get, "/v1/routes").json as? [Any])?.isEmpty == true)
        }
    }

    /// What the server answers has exactly the fields the document's schemas list (a view's
    /// field added, renamed or dropped without the document fails here, in swift test, not
    /// only in scripts/test's schemathesis run).
    @Test func theResponsesCarryExactlyTheDocumentedFields() async throws {
        let committed = try Data(contentsOf: Paths.packageRoot.appendingPathComponent("Sources/MailrouteAPI/openapi.json"))
        let document = try #require(try JSONSerialization.jsonObject(with: committed) as? [String: Any])
        let schemas = try #require((document["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]])
        let fields = schemas.mapValues { Set(($0["properties"] as? [String: Any])?.keys.map { $0 } ?? []) }
        try await withClient { client in
            func documented(_ name: String) -> Set<String> { fields[name] ?? [] }
            let config = try await call(client, .post, "/v1/configurations", Self.acme).object
            #expect(Set(config.keys) == documented("Config"))
            let verification = try await call(client, .post, "/v1/configurations/acme/main/verify").object
            #expect(Set(verification.keys) == documented("Verification"))
            let route = try await call(client, .put, "/v1/routes", #"{"tenant":"acme","kind":"category","key":"invite","config":"main"}"#).object
            #expect(Set(route.keys) == documented("Route"))
            let resolution = try await call(client, .get, "/v1/routes/resolve?tenant=acme&category=invite").object
            #expect(Set(resolution.keys) == documented("Resolution"))
            let id = try #require(try await call(client, .post, "/v1/messages", #"{"tenant":"acme","category":"invite","rcpt_to":["a@x.test"],"subject":"s","text_body":"t","attachments":[{"filename":"a.txt","content_base64":"aGk="}]}"#).object["id"] as? Int)
            let message = try await call(client, .get, "/v1/messages/\(id)").object
            #expect(Set(message.keys) == documented("Message"))
            let attachment = try #require((message["attachments"] as? [[String: Any]])?.first)
            #expect(Set(attachment.keys) == documented("AttachmentInfo"))
            let listed = try #require((try await call(client, .get, "/v1/messages").json as? [[String: Any]])?.first)
            #expect(Set(listed.keys) == documented("Message"))
            #expect(Set(try await call(client, .get, "/v1/stats").object.keys) == documented("QueueCounts"))
            let error = try await call(client, .get, "/v1/messages/\(id + 1000)").object
            #expect(Set(error.keys).isSubset(of: documented("Error")))
        }
    }

    /// The committed document is what the server serves, and it documents exactly the routes
    /// the router has: adding an endpoint without documenting it (or the reverse) fails here.
    @Test func theOpenAPIDocumentMatchesTheRouter() async throws {
        let committed = try Data(contentsOf: Paths.packageRoot.appendingPathComponent("Sources/MailrouteAPI/openapi.json"))
        let document = try #require(try JSONSerialization.jsonObject(with: committed) as? [String: Any])
        #expect(document["openapi"] as? String == "3.1.0")
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        var documented = Set<String>()
        for (path, item) in paths {
            for method in ["get", "put", "post", "patch", "delete"] where item[method] != nil { documented.insert("\(method.uppercased()) \(path)") }
        }
        let service = APIService(
            settings: CurrentSettings(settings), store: store, tokens: APITokens([Self.token]), metrics: nil,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let routed = Set(service.router().routes.map { "\($0.method.rawValue) \($0.path.description)" })
        #expect(routed == documented, "routed but not documented: \(routed.subtracting(documented).sorted()); documented but not routed: \(documented.subtracting(routed).sorted())")
        try await withClient { client in
            let served = try await client.execute(uri: "/openapi.json", method: .get) { Data(buffer: $0.body) }
            #expect(served == committed)
        }
    }
}
