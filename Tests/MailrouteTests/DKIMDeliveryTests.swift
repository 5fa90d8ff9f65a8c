import Foundation
import Testing

@testable import MailrouteCore

/// Mail signed by the daemon, received by a real SMTP server, verified by dkimpy.
@Suite struct DKIMDeliveryTests {
    static let keysTOML = "\n[dkim]\nkeys_dir = \"dkim\"\n"

    /// `mailroutectl dkim generate`, as an operator runs it; returns the record to publish.
    static func generate(_ env: CtlEnvironment, domain: String, selector: String, algorithm: String = "rsa") throws -> (String, String) {
        let json = try env.json("dkim", "generate", "--domain", domain, "--selector", selector, "--algorithm", algorithm)
        return (try #require(json["dns_name"] as? String), try #require(json["txt"] as? String))
    }

    static func verify(_ mail: ReceivedMessage, records: [String: String]) throws -> DKIMVerifier.Report {
        try DKIMVerifier.verify(Array(mail.data), records: records)
    }

    @Test func everyKindOfMessageVerifiesAfterARealServer() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(extraTOML: Self.keysTOML)
        var records: [String: String] = [:]
        for (selector, algorithm) in [("rsa1", "rsa"), ("ed1", "ed25519")] {
            let (name, txt) = try Self.generate(env, domain: "acme.test", selector: selector, algorithm: algorithm)
            records[name] = txt
        }
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let daemon = DaemonProcess(env: env)
        let longLine = String(repeating: "abc def  ", count: 560)  // over 5,000 characters, with runs of blanks
        var ids = [
            try daemon.enqueue(subject: "plain", text: "Hello,\n\nthe report is attached.\n\n\n"),
            try daemon.enqueue(subject: "both", text: "Text part", html: "<p>HTML <b>part</b></p>"),
            try daemon.enqueue(subject: "Größenänderung — ✓ 完成", text: "UTF-8 subject and body: ça va"),
            try daemon.enqueue(subject: "long", text: longLine + "\nend"),
            try daemon.enqueue(subject: "list", text: "x", headers: #"{"List-Unsubscribe": "<https://acme.test/u/1>"}"#),
        ]
        ids.append(try daemon.db.write { db -> Int64 in
            try db.execute(sql: "INSERT INTO messages (tenant, category, rcpt_to, subject, text_body) VALUES ('acme', 'report', '[\"r@example.com\"]', 'attachment', 'see attached')")
            let id = db.lastInsertedRowID
            try db.execute(
                sql: "INSERT INTO attachments (message_id, filename, content_type, content) VALUES (?, 'report.pdf', 'application/pdf', ?)",
                arguments: [id, Data((0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })])
            return id
        })
        try daemon.start()
        for id in ids { #expect(try daemon.waitFor(id, .sent).status == .sent) }

        let mails = server.messages()
        try #require(mails.count == ids.count)
        for mail in mails {
            let report = try Self.verify(mail, records: records)
            #expect(report.allPass, "\(mail.header("Subject") ?? ""): \(report)")
            #expect(Set(report.signatures.map(\.a)) == ["rsa-sha256", "ed25519-sha256"])
            #expect(report.signatures.allSatisfy { $0.d == "acme.test" })
        }
        // What arrived, changed after the fact: a word of the body, then the subject.
        let plain = try #require(mails.first { $0.header("Subject") == "plain" })
        for (from, to) in [("the report is attached", "the report is attacked"), ("Subject: plain", "Subject: plain!")] {
            let tampered = Array(plain.text.replacingOccurrences(of: from, with: to).utf8)
            #expect(tampered != Array(plain.data))
            let report = try DKIMVerifier.verify(tampered, records: records)
            #expect(report.signatures.count == 2 && report.signatures.allSatisfy { !$0.ok }, "\(to): \(report)")
        }
    }

    /// `config test` checks DKIM and DMARC the way the configuration's real mail leaves.
    @Test func theTestMessageIsSignedAsTheDaemonWouldSignIt() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(extraTOML: Self.keysTOML)
        let (name, txt) = try Self.generate(env, domain: "acme.test", selector: "t1")
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let result = try env.ctl("config", "test", "acme/main", "--to", "bob@example.com")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.stdout.contains("DKIM: signed as acme.test/t1 (rsa-sha256)"), "\(result.stdout)")
        let mail = try #require(server.messages().first)
        let report = try Self.verify(mail, records: [name: txt])
        #expect(report.allPass, "\(report)")
        #expect(report.signatures.map(\.s) == ["t1"])

        // --dkim server: unsigned, and the output says why.
        try #require(env.addConfig(name: "own", port: server.port, extra: ["--dkim", "server"]).status == 0)
        let own = try env.json("config", "test", "acme/own", "--to", "bob@example.com")
        #expect(own["ok"] as? Bool == true)
        #expect(own["dkim_keys"] as? [String] == [])
        let text = try env.ctl("config", "test", "acme/own", "--to", "bob@example.com")
        #expect(text.stdout.contains("DKIM: the tenant's server signs"))
        #expect(server.messages().dropFirst().allSatisfy { $0.header("DKIM-Signature") == nil })
    }

    @Test func aTenantWhoseServerSignsGetsNoPlatformSignature() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(extraTOML: Self.keysTOML)
        _ = try Self.generate(env, domain: "acme.test", selector: "s1")
        try #require(env.addConfig(name: "main", port: server.port, extra: ["--dkim", "server"]).status == 0)
        let daemon = DaemonProcess(env: env)
        let id = try daemon.enqueue()
        try daemon.start()
        try daemon.waitFor(id, .sent)
        let mail = try #require(server.messages().first)
        #expect(mail.header("DKIM-Signature") == nil)
    }

    @Test func fallbackMailIsSignedForThePlatformDomain() throws {
        let relay = try SMTPTestServer()
        let env = try CtlEnvironment(platformPort: relay.port, extraTOML: Self.keysTOML)
        let (name, txt) = try Self.generate(env, domain: "mailroute.test", selector: "platform")
        _ = try Self.generate(env, domain: "acme.test", selector: "s1")
        // Even a tenant that signs on its own server: the relay does not sign for it.
        try #require(env.addConfig(name: "main", port: closedPort(), extra: ["--dkim", "server"]).status == 0)
        let daemon = DaemonProcess(env: env)
        let id = try daemon.enqueue()
        try daemon.start()
        let row = try daemon.waitFor(id, .sent)
        #expect(row.route == .fallback)
        let mail = try #require(relay.messages().first)
        let report = try Self.verify(mail, records: [name: txt])
        #expect(report.allPass, "\(report)")
        #expect(report.signatures.map(\.d) == ["mailroute.test"])
    }

    @Test func anInternationalizedSenderIsSignedUnderItsPunycodeName() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(extraTOML: Self.keysTOML)
        let (name, txt) = try Self.generate(env, domain: "bücher.example", selector: "s1", algorithm: "ed25519")
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let daemon = DaemonProcess(env: env)
        let id = try daemon.enqueue(mailFrom: "verlag@Bücher.example")
        try daemon.start()
        try daemon.waitFor(id, .sent)
        let mail = try #require(server.messages().first)
        #expect(mail.envelope.mail_from == "verlag@xn--bcher-kva.example")
        let report = try Self.verify(mail, records: [name: txt])
        #expect(report.allPass && report.signatures.map(\.d) == ["xn--bcher-kva.example"], "\(report)")
    }

    @Test func sighupLoadsANewKey() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(extraTOML: Self.keysTOML)
        try FileManager.default.createDirectory(at: env.directory.appendingPathComponent("dkim"), withIntermediateDirectories: true)
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let daemon = DaemonProcess(env: env)
        try daemon.start()
        let first = try daemon.enqueue(subject: "before")
        try daemon.waitFor(first, .sent)
        #expect(server.messages().first?.header("DKIM-Signature") == nil)
        #expect(daemon.log().contains("no DKIM key for this domain"))

        let (name, txt) = try Self.generate(env, domain: "acme.test", selector: "new")
        let offset = UInt64(daemon.log().utf8.count)
        daemon.signal(SIGHUP)
        #expect(waitUntil(timeout: 15) { daemon.log(from: offset).contains("DKIM key loaded") })
        let second = try daemon.enqueue(subject: "after")
        try daemon.waitFor(second, .sent)
        let mail = try #require(server.messages().last)
        #expect(try Self.verify(mail, records: [name: txt]).allPass)
        #expect(daemon.stop() == 0)
        #expect(!daemon.log().contains("PRIVATE KEY"), "no key material in the log")
    }

    @Test func aBadKeyFileIsLoggedAndMailStillLeaves() throws {
        let server = try SMTPTestServer()
        let env = try CtlEnvironment(extraTOML: Self.keysTOML)
        let dir = env.directory.appendingPathComponent("dkim")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".utf8).write(to: dir.appendingPathComponent("acme.test.bad.pem"))
        try #require(env.addConfig(name: "main", port: server.port).status == 0)
        let daemon = DaemonProcess(env: env)
        let id = try daemon.enqueue()
        try daemon.start()
        #expect(try daemon.waitFor(id, .sent).status == .sent)
        #expect(daemon.log().contains("DKIM key skipped"))
        #expect(daemon.log().contains("acme.test.bad.pem"))
        #expect(server.messages().first?.header("DKIM-Signature") == nil)
    }
}

@Suite struct DKIMCommandTests {
    @Test func generateWritesAPrivateKeyAndListShowsWhichSigns() throws {
        let env = try CtlEnvironment(extraTOML: DKIMDeliveryTests.keysTOML)
        let generated = try env.ctl("dkim", "generate", "--domain", "Brand.Example", "--selector", "mr2026")
        #expect(generated.status == 0, "\(generated.output)")
        #expect(generated.stdout.contains("mr2026._domainkey.brand.example. IN TXT ( \"v=DKIM1; k=rsa; p="))
        let file = env.directory.appendingPathComponent("dkim/brand.example.mr2026.pem").path
        #expect(try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int == 0o600)
        #expect(!generated.output.contains("PRIVATE KEY"), "the key itself is never printed")

        let again = try env.ctl("dkim", "generate", "--domain", "brand.example", "--selector", "mr2026")
        #expect(again.status == 1 && again.stderr.contains("already exists"))

        // Rotation: a newer key of the same algorithm takes over.
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: file)
        #expect(try env.ctl("dkim", "generate", "--domain", "brand.example", "--selector", "mr2027").status == 0)
        #expect(try env.ctl("dkim", "generate", "--domain", "brand.example", "--selector", "ed", "--algorithm", "ed25519").status == 0)
        let list = try env.jsonArray("dkim", "list")
        let status = Dictionary(uniqueKeysWithValues: list.map { ($0["selector"] as? String ?? "", $0["status"] as? String ?? "") })
        #expect(status == ["mr2026": "standby", "mr2027": "signing", "ed": "signing"])
        let table = try env.ctl("dkim", "list")
        #expect(table.stdout.contains("ed._domainkey.brand.example. IN TXT \"v=DKIM1; k=ed25519; p="))
    }

    @Test(arguments: [
        (["--domain", "com", "--selector", "s"], "--domain"),
        (["--domain", "brand.example", "--selector", "a.b"], "--selector"),
        (["--domain", "brand.example", "--selector", "s", "--algorithm", "dsa"], "--algorithm"),
        (["--domain", "☃.example", "--selector", "s"], "U+2603"),
    ])
    func refusesBadNames(arguments: [String], named: String) throws {
        let env = try CtlEnvironment(extraTOML: DKIMDeliveryTests.keysTOML)
        let result = try env.ctl(["dkim", "generate"] + arguments)
        #expect(result.status != 0)
        #expect(result.stderr.contains(named), "\(result.stderr)")
        let written = (try? FileManager.default.contentsOfDirectory(atPath: env.directory.appendingPathComponent("dkim").path)) ?? []
        #expect(written.isEmpty)
    }

    @Test func configShowSaysWhatWouldSign() throws {
        let env = try CtlEnvironment(extraTOML: DKIMDeliveryTests.keysTOML)
        try #require(env.addConfig(name: "main", port: 2525).status == 0)
        try #require(env.addConfig(name: "own", port: 2525, extra: ["--dkim", "server"]).status == 0)
        #expect(try env.ctl("config", "show", "acme/main").stdout.contains("no key for acme.test"))
        _ = try DKIMDeliveryTests.generate(env, domain: "acme.test", selector: "s1")
        #expect(try env.ctl("config", "show", "acme/main").stdout.contains("platform: signed as acme.test/s1 (rsa-sha256)"))
        #expect(try env.json("config", "show", "acme/main")["dkim_keys"] as? [String] == ["acme.test/s1 (rsa-sha256)"])
        #expect(try env.ctl("config", "show", "acme/own").stdout.contains("server: the tenant's server signs"))
    }

    @Test func idnDomainsGetTheirPunycodeName() throws {
        let env = try CtlEnvironment(extraTOML: DKIMDeliveryTests.keysTOML)
        let json = try env.json("dkim", "generate", "--domain", "bücher.example", "--selector", "s", "--algorithm", "ed25519")
        #expect(json["dns_name"] as? String == "s._domainkey.xn--bcher-kva.example")
    }
}
