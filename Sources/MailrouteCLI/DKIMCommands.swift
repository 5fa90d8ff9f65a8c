import ArgumentParser
import Foundation
import MailrouteCore

extension DKIMAlgorithm: ExpressibleByArgument {
    /// `rsa` and `ed25519` as an operator types them; the full names work too.
    public init?(argument: String) {
        switch argument.lowercased() {
        case "rsa", "rsa-sha256": self = .rsaSHA256
        case "ed25519", "ed25519-sha256": self = .ed25519SHA256
        default: return nil
        }
    }

    public static var allValueStrings: [String] { ["rsa", "ed25519"] }
}

struct DKIMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dkim", abstract: "Manage the platform's DKIM signing keys ([dkim] keys_dir).",
        subcommands: [DKIMGenerate.self, DKIMList.self])
}

struct KeysDirectoryOption: ParsableArguments {
    @Option(name: .customLong("keys-dir"), help: "The keys directory (default: [dkim] keys_dir of the config file).")
    var keysDirectory: String?

    func resolve(_ global: GlobalOptions) throws -> String {
        try keysDirectory ?? global.context.settings().dkim.keysDirectory
    }
}

struct DKIMKeyView: Encodable {
    var file: String
    @Nullable var domain: String?
    @Nullable var selector: String?
    @Nullable var algorithm: String?
    @Nullable var bits: Int?
    /// `signing`, `standby` (a newer key of the same algorithm signs) or `error`.
    var status: String
    @Nullable var error: String?
    @Nullable var warning: String?
    @Nullable var dnsName: String?
    @Nullable var txt: String?
}

struct DKIMGenerate: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write a new signing key (mode 0600, never over an existing file) and print the DNS TXT record to publish.",
        discussion: """
            The key is DOMAIN.SELECTOR.pem in the keys directory. Publish the record, then reload the daemon \
            (systemctl reload mailroute) to sign with it. To rotate, generate a key with a new selector: the newest \
            key of each algorithm signs.
            """)
    @OptionGroup var global: GlobalOptions
    @Option(help: "The domain mail is signed for (d=), e.g. brand.com.") var domain: String
    @Option(help: "The selector (s=): letters, digits and hyphens, e.g. mr2026.") var selector: String
    @Option(help: "rsa (2048 bits, what every verifier knows) or ed25519 (RFC 8463).") var algorithm: DKIMAlgorithm = .rsaSHA256
    @OptionGroup var keys: KeysDirectoryOption

    func execute() async throws {
        let directory = try keys.resolve(global)
        let domain: String
        let selector: String
        do {
            domain = try DNSName.domain(self.domain)
        } catch {
            throw MailrouteError.invalid(field: "--domain", reason: error.description)
        }
        do {
            selector = try DNSName.selector(self.selector)
        } catch {
            throw MailrouteError.invalid(field: "--selector", reason: error.description)
        }
        let (key, pem) = try DKIMKey.generate(domain: domain, selector: selector, algorithm: algorithm)
        let path = (directory as NSString).appendingPathComponent("\(domain).\(selector).pem")
        // Under systemd the daemon runs as the owner of the keys directory, not as root.
        var owner: (uid_t, gid_t)?
        if let attributes = try? FileManager.default.attributesOfItem(atPath: directory),
            let uid = (attributes[.ownerAccountID] as? NSNumber)?.uint32Value,
            let gid = (attributes[.groupOwnerAccountID] as? NSNumber)?.uint32Value
        {
            owner = (uid, gid)
        }
        do {
            try PrivateFile.create(at: path, contents: Array(pem.utf8), owner: owner)
        } catch PrivateFile.Exists.exists {
            throw MailrouteError.invalid(
                field: "--selector", reason: "\(path) already exists; a new key needs a new selector, so the published record stays valid")
        }
        if global.context.json {
            return try Output.json(DKIMKeyView(
                file: path, domain: key.domain, selector: key.selector, algorithm: key.algorithm.rawValue, bits: key.bits,
                status: "signing", dnsName: key.dnsName, txt: key.txtRecord))
        }
        print("wrote \(path) (\(key.algorithm.rawValue), \(key.bits) bits)")
        print("publish this TXT record, then reload the daemon (systemctl reload mailroute):")
        print()
        print(key.zoneFileRecord)
    }
}

struct DKIMList: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "Show the keys in the keys directory, which of them sign, and their DNS TXT records.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var keys: KeysDirectoryOption

    func execute() async throws {
        let directory = try keys.resolve(global)
        let keyring = DKIMKeyring.load(directory: directory)
        guard keyring.directoryExists else {
            throw MailrouteError.invalid(field: "[dkim] keys_dir", reason: "\(directory) does not exist")
        }
        let views = keyring.entries.map { entry -> DKIMKeyView in
            var view = DKIMKeyView(file: entry.file, domain: entry.domain, selector: entry.selector, status: "error", warning: entry.warning)
            switch entry.result {
            case .success(let key):
                let signing = keyring.signingKeys(for: key.domain).contains {
                    $0.selector == key.selector && $0.algorithm == key.algorithm && $0.domain == key.domain
                }
                view.algorithm = key.algorithm.rawValue
                view.bits = key.bits
                view.status = signing ? "signing" : "standby"
                view.dnsName = key.dnsName
                view.txt = key.txtRecord
            case .failure(let error):
                view.error = error.description
            }
            return view
        }
        if global.context.json { return try Output.json(views) }
        if views.isEmpty {
            print("no keys in \(directory); create one with `mailroutectl dkim generate --domain D --selector S`")
            return
        }
        Output.table(
            ["DOMAIN", "SELECTOR", "ALGORITHM", "BITS", "STATUS"],
            views.map { v in
                [v.domain ?? "-", v.selector ?? "-", v.algorithm ?? "-", v.bits.map(String.init) ?? "-",
                 v.status == "error"
                    ? "error in \(URL(fileURLWithPath: v.file).lastPathComponent): \(v.error ?? "")"
                    : v.status + (v.warning.map { " (warning: \($0))" } ?? "")]
            })
        for entry in keyring.entries {
            guard let key = entry.key else { continue }
            print()
            print(key.zoneFileRecord)
        }
    }
}
