import Foundation
import Testing

@testable import MailrouteCore

/// `config verify` and `config test` against real SMTP servers on 127.0.0.1.
@Suite struct VerifyAndTestCommandTests {
    let env: CtlEnvironment

    init() throws {
        env = try CtlEnvironment()
    }

    static let password = "correct horse battery staple"

    func tlsAuthServer(_ tweak: (inout SMTPTestServer.Options) -> Void = { _ in }) throws -> SMTPTestServer {
        var options = SMTPTestServer.Options()
        options.starttls = true
        options.auth = ("alice", Self.password)
        tweak(&options)
        return try SMTPTestServer(options)
    }

    func addAlice(_ server: SMTPTestServer, name: String = "main", password: String = password, security: String = "starttls") throws {
        let result = try env.addConfig(
            name: name, port: server.port, security: security,
            extra: ["--username", "alice", "--ca-file", TestCA.shared.caFile, "--from-name", "Acme Reports"],
            password: password)
        #expect(result.status == 0, "\(result.output)")
    }

    func status(_ label: String = "acme/main") throws -> (String?, String?) {
        let config = try env.json("config", "show", label)
        return (config["status"] as? String, config["error_kind"] as? String)
    }

    @Test func starttlsWithAuthBehindAPrivateCAIsVerified() throws {
        let server = try tlsAuthServer()
        try addAlice(server)
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status == 0, "\(result.output)")
        #expect(try status() == ("verified", nil))
        #expect(server.messages().isEmpty, "verify sends nothing")
        #expect(waitUntil { server.events().contains("quit") }, "verify QUITs")
    }

    @Test func implicitTLSIsVerified() throws {
        let server = try SMTPTestServer(.init(implicitTLS: true, auth: ("alice", Self.password)))
        try addAlice(server, security: "tls")
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status == 0, "\(result.output)")
        #expect(try status() == ("verified", nil))
    }

    @Test func closedPortIsAConnectionFailure() throws {
        try env.addConfig(name: "main", port: closedPort())
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status != 0)
        #expect(result.stdout.contains("connection_failed"))
        #expect(result.stdout.contains("check host and port"))
        // libcurl's words, not the server's: nothing answered.
        #expect(result.stdout.contains("details "))
        #expect(!result.stdout.contains("server said"), "\(result.stdout)")
        #expect(try status() == ("error", "connection_failed"))
    }

    @Test func wrongPasswordIsAnAuthFailure() throws {
        let server = try tlsAuthServer()
        try addAlice(server, password: "wrong password")
        let result = try env.json("config", "verify", "acme/main")
        #expect(result["ok"] as? Bool == false)
        #expect(result["error_kind"] as? String == "auth_failed")
        #expect(result["smtp_code"] as? Int == 535)
        #expect((result["server_text"] as? String)?.hasPrefix("535") == true)
        #expect(result["suggested_action"] as? String == "check the credentials with the provider")
        #expect(try status() == ("error", "auth_failed"))
        let shown = try env.json("config", "show", "acme/main")
        #expect((shown["error_text"] as? String)?.contains("535") == true, "the server's text is stored")
    }

    @Test func starttlsAgainstAPlainServerIsATLSFailure() throws {
        let server = try SMTPTestServer()
        try env.addConfig(name: "main", port: server.port, security: "starttls")
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status != 0)
        #expect(result.stdout.contains("tls_failed"))
        #expect(result.stdout.contains("check the security mode and port"))
        #expect(try status() == ("error", "tls_failed"))
    }

    @Test func untrustedCertificateIsATLSFailure() throws {
        let server = try tlsAuthServer()
        // No --ca-file: the system CAs do not know our test CA.
        try env.addConfig(name: "main", port: server.port, security: "starttls", extra: ["--username", "alice"], password: Self.password)
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status != 0)
        #expect(try status() == ("error", "tls_failed"))
        #expect(result.stdout.contains("--ca-file"), "a private CA is the usual cause: \(result.stdout)")
        let shown = try env.json("config", "show", "acme/main")
        #expect((shown["suggested_action"] as? String)?.contains("--ca-file") == true)
    }

    @Test func credentialsWithoutAnAUTHOfferAreNotVerified() throws {
        // aiosmtpd offers AUTH only after STARTTLS; with security none it never does.
        let server = try SMTPTestServer(.init(starttls: true, auth: ("alice", Self.password)))
        try env.addConfig(name: "main", port: server.port, security: "none", extra: ["--username", "alice"], password: Self.password)
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status != 0)
        #expect(result.stdout.contains("auth_failed"))
        #expect(try status() == ("error", "auth_failed"))
    }

    @Test func testMessageArrivesWithTheConfigurationsFrom() throws {
        let server = try tlsAuthServer()
        try addAlice(server)
        let result = try env.ctl("config", "test", "acme/main", "--to", "bob@example.com")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.stdout.contains("250 2.0.0 Ok: queued as TEST"))
        let message = try #require(server.messages().first)
        #expect(message.envelope.mail_from == "main@acme.test")
        #expect(message.envelope.rcpt_tos == ["bob@example.com"])
        #expect(message.envelope.login == "alice")
        #expect(message.header("From") == "Acme Reports <main@acme.test>")
        #expect(message.header("To") == "bob@example.com")
        #expect(message.header("Message-ID")?.hasSuffix("@acme.test>") == true)
        #expect(message.header("Date") != nil)
        #expect(try status() == ("verified", nil))
    }

    @Test func refusedSenderIsFromRejected() throws {
        let server = try tlsAuthServer { $0.rejectFrom = ["main@acme.test"] }
        try addAlice(server)
        let result = try env.json("config", "test", "acme/main", "--to", "bob@example.com")
        #expect(result["error_kind"] as? String == "from_rejected")
        #expect(result["smtp_code"] as? Int == 550)
        #expect(result["enhanced_code"] as? String == "5.7.1")
        #expect(try status() == ("error", "from_rejected"))
        #expect(server.messages().isEmpty)
    }

    @Test func refusedRecipientIsRecipientRejected() throws {
        let server = try tlsAuthServer { $0.rejectRecipients = ["nobody@example.com"] }
        try addAlice(server)
        let result = try env.json("config", "test", "acme/main", "--to", "nobody@example.com")
        #expect(result["ok"] as? Bool == false)
        #expect(result["error_kind"] as? String == "recipient_rejected")
        #expect((result["server_text"] as? String)?.contains("5.1.1") == true)
        #expect(result["suggested_action"] as? String == "try another recipient")
        #expect(try status() == ("error", "recipient_rejected"))
    }

    @Test func thePasswordIsNeverShownAndNeverStoredInClear() throws {
        let server = try tlsAuthServer()
        try addAlice(server)
        var outputs: [ProcessResult] = []
        outputs.append(try env.ctl("config", "verify", "acme/main"))
        outputs.append(try env.ctl("config", "test", "acme/main", "--to", "bob@example.com"))
        for args in [["config", "show", "acme/main"], ["config", "list"], ["route", "resolve", "--tenant", "acme"]] {
            outputs.append(try env.ctl(args))
            outputs.append(try env.ctl(args + ["--json"]))
        }
        outputs.append(try env.ctl(["config", "edit", "acme/main", "--from-name", "X", "--json"]))
        for output in outputs {
            #expect(!output.output.contains(Self.password))
            #expect(!output.output.contains("Y29ycmVjdCBob3JzZ"), "nor its base64")
        }
        // Every byte of the database and its WAL.
        for file in try FileManager.default.contentsOfDirectory(atPath: env.directory.path) where file.hasPrefix("queue.db") {
            let bytes = try Data(contentsOf: env.directory.appendingPathComponent(file))
            #expect(bytes.range(of: Data(Self.password.utf8)) == nil, "\(file) holds the password")
        }
        let sealed = try #require(try env.store().config(tenant: "acme", name: "main")?.passwordSealed)
        #expect(!sealed.isEmpty)
    }

    @Test func aPasswordNeedsTheKey() throws {
        try FileManager.default.removeItem(atPath: env.keyPath)
        let result = try env.addConfig(name: "main", port: 2525, extra: ["--username", "alice"], password: "pw")
        #expect(result.status != 0)
        #expect(result.stderr.contains("key generate"))
        #expect(try env.jsonArray("config", "list").isEmpty)
    }

    /// A key path that is only mistyped must not lead an operator to make a new key, which
    /// would orphan every stored password.
    @Test func aLostKeyWithStoredPasswordsIsNotToBeRegenerated() throws {
        #expect(try env.addConfig(name: "main", port: 2525, extra: ["--username", "alice"], password: "pw").status == 0)
        try FileManager.default.removeItem(atPath: env.keyPath)
        let result = try env.ctl("config", "verify", "acme/main")
        #expect(result.status != 0)
        #expect(result.stderr.contains("1 configuration(s) hold passwords sealed"), "\(result.stderr)")
        #expect(result.stderr.contains("do not generate a new one"))
        #expect(!result.stderr.contains("key generate"))
    }
}
