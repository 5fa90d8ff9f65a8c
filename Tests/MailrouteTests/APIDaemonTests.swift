import Foundation
import Testing

@testable import MailrouteCore

/// The HTTP API served by a real `mailrouted` on a free loopback port (or a unix socket),
/// called by real clients: `curl` and Python's `urllib` (Tests/clients/api_urllib.py), with
/// real SMTP servers behind the configurations.
@Suite struct APIDaemonTests {
    static let token = "daemon-test-token-" + UUID().uuidString

    /// A daemon with `[api]` on; `listen` defaults to a free loopback port.
    final class APIDaemon: @unchecked Sendable {
        let env: CtlEnvironment
        let daemon: DaemonProcess
        private(set) var base = ""

        init(
            backend: Backend = .sqlite, listen: String = "127.0.0.1:0", api extra: String = "", writeToken: Bool = true,
            platformPort: Int = closedPort()
        ) throws {
            let tokenLine = writeToken ? #"token_file = "api.token""# : ""
            env = try CtlEnvironment(
                backend: backend, platformPort: platformPort,
                extraTOML: """

                    [api]
                    listen = "\(listen)"
                    \(tokenLine)
                    max_body_bytes = 65536
                    \(extra)
                    """)
            if writeToken {
                let path = env.directory.appendingPathComponent("api.token").path
                try "# the settings page\n\(APIDaemonTests.token)\n".write(toFile: path, atomically: true, encoding: .utf8)
                chmod(path, 0o600)
            }
            daemon = DaemonProcess(env: env)
        }

        func start() throws {
            try daemon.start()
            var port: String?
            _ = waitUntil(timeout: 15) {
                // One read per look: the line may land between two.
                let log = daemon.log()
                port = log.firstMatch(of: /api listening .*address=127\.0\.0\.1:(\d+)/).map { String($0.1) }
                return port != nil || log.contains("api listening")
            }
            if let port { base = "http://127.0.0.1:\(port)" }
        }

        /// acme/main, a plain-SMTP configuration at `port`: the tenant's default.
        func addAcme(port: Int) throws {
            let reply = try curl("POST", "/v1/configurations", """
                {"tenant":"acme","name":"main","host":"127.0.0.1","port":\(port),"security":"none","from_address":"reports@acme.test"}
                """)
            #expect(reply.status == 201, "\(reply.text)")
        }

        /// `curl` with the token (unless `token` is nil): the status and the JSON body.
        func curl(
            _ method: String, _ path: String, _ body: String? = nil, token: String? = APIDaemonTests.token, socket: String? = nil,
            headers: [String] = []
        ) throws -> (status: Int, json: Any?, text: String) {
            var arguments = ["-sS", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--max-time", "30"]
            for header in headers { arguments += ["-H", header] }
            if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
            if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
            if let socket { arguments += ["--unix-socket", socket] }
            arguments.append((socket == nil ? base : "http://localhost") + path)
            let result = try runProcess(URL(fileURLWithPath: "/usr/bin/curl"), arguments, timeout: 40)
            let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            let status = Int(lines.last ?? "") ?? -1
            let text = lines.dropLast().joined(separator: "\n")
            return (status, try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]), text)
        }
    }

    @Test(arguments: Backend.allCases) func everyResourceFromPythonUrllib(_ backend: Backend) throws {
        let server = try SMTPTestServer()
        let api = try APIDaemon(backend: backend)
        try api.start()
        let result = try runProcess(
            URL(fileURLWithPath: "/usr/bin/python3"),
            [Paths.packageRoot.appendingPathComponent("Tests/clients/api_urllib.py").path, api.base, Self.token, "\(server.port)"],
            timeout: 120)
        #expect(result.status == 0, "\(result.output)\n\(api.daemon.log())")
        #expect(result.stdout.contains("0 failure(s)"))
        #expect(server.messages().contains { $0.header("Subject") == "Mailroute test of py/main" }, "the test message arrived")
        // Nothing the client sent as a secret is in the daemon's log.
        #expect(!api.daemon.log().contains("urllib-secret-pw"))
        #expect(!api.daemon.log().contains(Self.token))
    }

    /// Each resource once with curl, success and the error codes it has.
    @Test func everyResourceFromCurl() throws {
        let server = try SMTPTestServer()
        let api = try APIDaemon()
        try api.start()
        let config = #"{"tenant":"acme","name":"main","host":"127.0.0.1","port":\#(server.port),"security":"none","from_address":"a@acme.test"}"#
        let steps: [(String, String, String?, Int)] = [
            ("GET", "/v1/stats", nil, 200),
            ("POST", "/v1/configurations", config, 201),
            ("POST", "/v1/configurations", config, 409),
            ("POST", "/v1/configurations", #"{"tenant":"acme"}"#, 400),
            ("GET", "/v1/configurations", nil, 200),
            ("GET", "/v1/configurations/acme/main", nil, 200),
            ("GET", "/v1/configurations/acme/gone", nil, 404),
            ("PATCH", "/v1/configurations/acme/main", #"{"priority":2}"#, 200),
            ("PATCH", "/v1/configurations/acme/main", #"{"priority":7}"#, 400),
            ("POST", "/v1/configurations/acme/main/verify", nil, 200),
            ("POST", "/v1/configurations/acme/main/test", #"{"to":"ann@example.test"}"#, 200),
            ("POST", "/v1/configurations/acme/main/default", nil, 200),
            ("POST", "/v1/configurations/acme/main/disable", nil, 422),
            ("POST", "/v1/configurations/acme/main/enable", nil, 200),
            ("PUT", "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"a-1","config":"main"}"#, 200),
            ("PUT", "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"a-1","config":"gone"}"#, 404),
            ("GET", "/v1/routes", nil, 200),
            ("GET", "/v1/routes/resolve?tenant=acme&advertiser=a-1", nil, 200),
            ("DELETE", "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"a-1"}"#, 200),
            ("DELETE", "/v1/routes", #"{"tenant":"acme","kind":"advertiser","key":"a-1"}"#, 404),
            ("POST", "/v1/messages", #"{"tenant":"acme","category":"report","rcpt_to":["b@example.test"],"subject":"s","text_body":"t","idempotency_key":"c-1"}"#, 201),
            ("POST", "/v1/messages", #"{"tenant":"acme","category":"report","rcpt_to":["b@example.test"],"subject":"s","text_body":"t","idempotency_key":"c-1"}"#, 409),
            ("POST", "/v1/messages", "{\"category\":\"report\",\"rcpt_to\":[\"b@example.test\"],\"subject\":\"s\",\"text_body\":\"\(String(repeating: "x", count: 70_000))\"}", 413),
            ("GET", "/v1/messages?tenant=acme", nil, 200),
            ("GET", "/v1/messages/1", nil, 200),
            ("GET", "/v1/messages/424242", nil, 404),
            ("POST", "/v1/messages/424242/retry", nil, 404),
            ("POST", "/v1/messages/424242/cancel", nil, 404),
            ("DELETE", "/v1/configurations/acme/main", nil, 200),
            ("GET", "/openapi.json", nil, 200),
            ("GET", "/metrics", nil, 200),
        ]
        for (method, path, body, status) in steps {
            let reply = try api.curl(method, path, body)
            #expect(reply.status == status, "\(method) \(path): \(reply.status) \(reply.text.prefix(300))")
            if status >= 400 {
                let error = (reply.json as? [String: Any])?["error"] as? [String: Any]
                #expect(error?["code"] is String && error?["message"] is String, "\(method) \(path): \(reply.text.prefix(300))")
            }
        }
        // A chunked body has no Content-Length to refuse up front: still 413, nothing queued.
        let chunked = try api.curl(
            "POST", "/v1/messages", "{\"category\":\"report\",\"rcpt_to\":[\"b@example.test\"],\"subject\":\"s\",\"text_body\":\"\(String(repeating: "y", count: 70_000))\"}",
            headers: ["Transfer-Encoding: chunked"])
        #expect(chunked.status == 413, "\(chunked.text)")
        #expect(try api.curl("GET", "/v1/stats", token: nil).status == 401)
        #expect(try api.curl("GET", "/v1/stats", token: "not-the-token-0123456789").status == 401)
    }

    /// The settings page: add → verify → error with its kind and suggested action → edit →
    /// verify → verified → a test email that arrives.
    @Test func theSettingsPageFlow() throws {
        let server = try SMTPTestServer(.init(starttls: true, auth: ("alice", "right-password-123")))
        let api = try APIDaemon()
        try api.start()
        let add = try api.curl("POST", "/v1/configurations", """
            {"tenant":"shop","name":"smtp","host":"127.0.0.1","port":\(server.port),"security":"starttls",
             "username":"alice","password":"wrong-password-456","from_address":"news@shop.test",
             "ca_file":"\(TestCA.shared.caFile)"}
            """)
        #expect(add.status == 201, "\(add.text)")
        #expect((add.json as? [String: Any])?["status"] as? String == "not_verified")

        let failed = try #require(try api.curl("POST", "/v1/configurations/shop/smtp/verify").json as? [String: Any])
        #expect(failed["ok"] as? Bool == false)
        #expect(failed["error_kind"] as? String == "auth_failed")
        #expect(failed["suggested_action"] as? String == "check the credentials with the provider")
        let shown = try #require(try api.curl("GET", "/v1/configurations/shop/smtp").json as? [String: Any])
        #expect(shown["status"] as? String == "error")
        #expect(shown["error_kind"] as? String == "auth_failed")

        let edited = try api.curl("PATCH", "/v1/configurations/shop/smtp", #"{"password":"right-password-123"}"#)
        #expect(edited.status == 200)
        #expect((edited.json as? [String: Any])?["status"] as? String == "not_verified", "a new password resets the status")

        let verified = try #require(try api.curl("POST", "/v1/configurations/shop/smtp/verify").json as? [String: Any])
        #expect(verified["ok"] as? Bool == true, "\(verified)")
        #expect((try api.curl("GET", "/v1/configurations/shop/smtp").json as? [String: Any])?["status"] as? String == "verified")

        let test = try #require(try api.curl("POST", "/v1/configurations/shop/smtp/test", #"{"to":"owner@shop.test"}"#).json as? [String: Any])
        #expect(test["ok"] as? Bool == true, "\(test)")
        #expect((test["final_reply"] as? String)?.hasPrefix("250") == true)
        #expect(waitUntil { server.messages().contains { $0.envelope.rcpt_tos == ["owner@shop.test"] && $0.envelope.login == "alice" } })
        for secret in ["wrong-password-456", "right-password-123"] {
            #expect(!api.daemon.log().contains(secret))
            #expect(!add.text.contains(secret) && !edited.text.contains(secret))
        }
    }

    @Test func aMessageEnqueuedThroughTheAPIArrives() throws {
        let server = try SMTPTestServer()
        let api = try APIDaemon()
        try api.start()
        try api.addAcme(port: server.port)
        let created = try api.curl("POST", "/v1/messages", """
            {"tenant":"acme","category":"report","rcpt_to":["Ann <ann@example.test>"],"subject":"Weekly report",
             "text_body":"Numbers inside.","headers":{"X-Report":"weekly"},
             "attachments":[{"filename":"report.csv","content_type":"text/csv","content_base64":"YSxiCjEsMgo="}]}
            """)
        #expect(created.status == 201, "\(created.text)")
        let id = try #require((created.json as? [String: Any])?["id"] as? Int)
        var status: String?
        #expect(waitUntil(timeout: 20) {
            status = (try? api.curl("GET", "/v1/messages/\(id)").json as? [String: Any])?["status"] as? String
            return status == "sent"
        }, "status \(status ?? "-")")
        let message = try #require(server.messages().first)
        #expect(message.envelope.rcpt_tos == ["ann@example.test"])
        #expect(message.header("Subject") == "Weekly report")
        #expect(message.header("X-Report") == "weekly")
        #expect(message.text.contains("report.csv"))
        let shown = try #require(try api.curl("GET", "/v1/messages/\(id)").json as? [String: Any])
        let log = try #require(shown["attempt_log"] as? [[String: Any]])
        #expect(log.last?["outcome"] as? String == "sent")
        #expect(log.last?["config"] as? String == "acme/main")
        #expect(shown["config"] as? String == "acme/main", "the message names its configuration")
        let listed = try #require(try api.curl("GET", "/v1/messages?config=acme/main").json as? [[String: Any]])
        #expect(listed.map { $0["id"] as? Int } == [id])
        #expect(listed.first?["config"] as? String == "acme/main")
    }

    /// `GET /metrics` (no token: metrics_auth is off) moves with the queue: after one delivery
    /// the sent counter, the attempt counter and the latency histogram say so, and no
    /// recipient appears in any label.
    @Test func metricsChangeAfterADelivery() throws {
        let server = try SMTPTestServer()
        let api = try APIDaemon()
        try api.start()
        try api.addAcme(port: server.port)
        let before = try api.curl("GET", "/metrics", token: nil)
        #expect(before.status == 200, "\(before.text) \(api.daemon.log())")
        #expect(!before.text.contains(#"mailroute_messages_total{config="acme/main",outcome="sent"}"#))
        let id = try api.daemon.enqueue(tenant: "acme", to: ["metrics-ann@example.test"], subject: "Metrics")
        _ = try api.daemon.waitFor(id, .sent)
        var after = ""
        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            Self.samples(after).first { $0.name == name && $0.labels == labels }?.value
        }
        #expect(waitUntil {
            after = (try? api.curl("GET", "/metrics", token: nil).text) ?? ""
            return value("mailroute_messages_total", ["config": "acme/main", "outcome": "sent"]) == 1
        }, "\(after)")
        #expect(value("mailroute_attempts_total", ["error_kind": "none", "outcome": "sent"]) == 1, "\(after)")
        #expect(value("mailroute_delivery_latency_seconds_count") == 1, "\(after)")
        #expect(value("mailroute_queue_messages", ["status": "sent"]) == 1, "\(after)")
        #expect(value("mailroute_configurations", ["status": "verified"]) == 1, "a success verifies it: \(after)")
        #expect(value("mailroute_database_up") == 1)
        #expect(!after.contains("metrics-ann"), "recipients are not label values")
    }

    /// Prometheus text as (name, labels, value), whatever order the labels come in.
    static func samples(_ text: String) -> [(name: String, labels: [String: String], value: Double)] {
        text.split(separator: "\n").compactMap { line in
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { return nil }
            let series = line[..<space]
            guard let brace = series.firstIndex(of: "{") else { return (String(series), [:], value) }
            var labels: [String: String] = [:]
            for pair in series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { labels[String(parts[0])] = String(parts[1].dropFirst().dropLast()) }
            }
            return (String(series[..<brace]), labels, value)
        }
    }

    /// A SIGHUP that tightens `[delivery] allowed_networks` reaches the API at once, as it
    /// reaches mailroutectl, which reads the file each time.
    @Test func aReloadReachesTheAPI() throws {
        let api = try APIDaemon()
        try api.start()
        let config = #"{"tenant":"acme","name":"NAME","host":"127.0.0.1","port":2526,"security":"none","from_address":"a@acme.test"}"#
        #expect(try api.curl("POST", "/v1/configurations", config.replacingOccurrences(of: "NAME", with: "first")).status == 201)
        let toml = try String(contentsOfFile: api.env.configPath, encoding: .utf8)
        try toml.replacingOccurrences(of: #"allowed_networks = ["127.0.0.0/8", "::1/128"]"#, with: "allowed_networks = []")
            .write(toFile: api.env.configPath, atomically: true, encoding: .utf8)
        api.daemon.signal(SIGHUP)
        #expect(waitUntil { api.daemon.log().contains("reloaded") })
        let refused = try api.curl("POST", "/v1/configurations", config.replacingOccurrences(of: "NAME", with: "second"))
        #expect(refused.status == 400, "\(refused.text)")
        #expect(((refused.json as? [String: Any])?["error"] as? [String: Any])?["field"] as? String == "host")
    }

    @Test func aUnixSocketTheProxyGroupCanReach() throws {
        let socket = Paths.temporaryDirectory("api-sock").appendingPathComponent("api.sock").path
        let api = try APIDaemon(listen: "unix:\(socket)")
        try api.start()
        #expect(waitUntil { api.daemon.log().contains("api listening") })
        let reply = try api.curl("GET", "/v1/stats", socket: socket)
        #expect(reply.status == 200, "\(reply.text)")
        var info = stat()
        #expect(stat(socket, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
        // A restart finds the old socket file and binds anyway.
        #expect(api.daemon.stop(SIGKILL) != 0)
        try api.daemon.start()
        #expect(waitUntil { (try? api.curl("GET", "/v1/stats", socket: socket).status) == 200 })
    }

    @Test func noTokenRefusesToStartWithTheFix() throws {
        let api = try APIDaemon(writeToken: false)
        #expect(throws: (any Error).self) { try api.daemon.start() }
        #expect(api.daemon.log().contains("token_file"), "\(api.daemon.log())")
    }

    @Test func aTokenFileOthersCanReadIsRefused() throws {
        let api = try APIDaemon()
        chmod(api.env.directory.appendingPathComponent("api.token").path, 0o644)
        #expect(throws: (any Error).self) { try api.daemon.start() }
        #expect(api.daemon.log().contains("chmod 0640"), "\(api.daemon.log())")
    }

    /// SIGTERM stops intake and finishes what runs: a test email in flight (its server waits
    /// before answering DATA) still gets its answer, and the daemon then exits cleanly.
    @Test func sigtermFinishesTheRequestsInFlight() throws {
        let server = try SMTPTestServer.fault("--delay-data", "2")
        let api = try APIDaemon()
        try api.start()
        try api.addAcme(port: server.port)
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var reply: (status: Int, json: Any?, text: String)?
        Thread {
            reply = try? api.curl("POST", "/v1/configurations/acme/main/test", #"{"to":"ann@example.test"}"#)
            done.signal()
        }.start()
        #expect(waitUntil { server.events().contains("connect") })
        let before = Date()
        api.daemon.signal(SIGTERM)
        // Intake stops at once: a new connection is refused while the test email is still out.
        #expect(waitUntil { (try? api.curl("GET", "/v1/stats").status) == 0 }, "the listener closed")
        #expect(reply == nil, "the request in flight is still running")
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(reply?.status == 200, "\(reply?.text ?? "no reply")")
        #expect((reply?.json as? [String: Any])?["ok"] as? Bool == true, "\(reply?.text ?? "")")
        let process = try #require(api.daemon.process)
        #expect(waitUntil(timeout: 30) { !process.isRunning })
        #expect(Date().timeIntervalSince(before) < 30)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(api.daemon.log())")
    }
}
