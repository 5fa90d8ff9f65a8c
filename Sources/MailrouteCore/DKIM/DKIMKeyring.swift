import Foundation

/// The keys of the DKIM keys directory (`DOMAIN.SELECTOR.pem`), read once; the daemon reads
/// a new keyring on SIGHUP instead of touching the disk per message.
public struct DKIMKeyring: Sendable {
    public let directory: String
    public let directoryExists: Bool
    /// Every `*.pem` file, readable or not, by file name.
    public let entries: [Entry]
    private let byDomain: [String: [DKIMKey]]

    public struct Entry: Sendable {
        public var file: String
        public var domain: String?
        public var selector: String?
        public var modified: Date
        public var result: Result<DKIMKey, DKIMKeyError>
        /// Something to fix that does not stop the key from being used.
        public var warning: String?

        public var key: DKIMKey? { try? result.get() }
    }

    public static func load(directory: String) -> DKIMKeyring {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            return DKIMKeyring(directory: directory, directoryExists: false, entries: [])
        }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".pem") && !$0.hasPrefix(".") }
            .sorted()
        let entries = names.map { loadEntry(directory: directory, name: $0) }
        return DKIMKeyring(directory: directory, directoryExists: true, entries: entries)
    }

    init(directory: String, directoryExists: Bool, entries: [Entry]) {
        self.directory = directory
        self.directoryExists = directoryExists
        self.entries = entries
        // Per domain and algorithm the newest file wins, so a rotation is: add the new
        // selector's file, publish its record, reload.
        var chosen: [String: [DKIMAlgorithm: Entry]] = [:]
        for entry in entries {
            guard let key = entry.key else { continue }
            if let current = chosen[key.domain]?[key.algorithm],
                (current.modified, current.key?.selector ?? "") >= (entry.modified, key.selector)
            {
                continue
            }
            chosen[key.domain, default: [:]][key.algorithm] = entry
        }
        byDomain = chosen.mapValues { perAlgorithm in
            DKIMAlgorithm.allCases.compactMap { perAlgorithm[$0]?.key }
        }
    }

    public var keys: [DKIMKey] { entries.compactMap(\.key) }

    /// The keys that sign mail from `domain`: its own, else its nearest parent's (a key for
    /// `brand.com` signs `news.brand.com`, which DMARC's relaxed alignment accepts).
    /// RSA first, then Ed25519 when both exist: RFC 8463 expects dual signing while
    /// verifiers that know only RSA remain.
    public func signingKeys(for domain: String) -> [DKIMKey] {
        var labels = domain.lowercased().split(separator: ".")
        while labels.count >= 2 {
            if let keys = byDomain[labels.joined(separator: ".")] { return keys }
            labels.removeFirst()
        }
        return []
    }

    /// The keys that sign mail from `address` under a configuration's `dkim` mode (none when
    /// the tenant's own server signs): the one rule the daemon, `config test` and `config show`
    /// follow. The From header carries an internationalized domain in punycode, and so do key names.
    public func signingKeys(forSender address: String, mode: DKIMMode) -> [DKIMKey] {
        guard mode == .platform, let at = address.lastIndex(of: "@") else { return [] }
        return signingKeys(for: SenderAuthorization.normalizeDomain(address[address.index(after: at)...]))
    }

    static func loadEntry(directory: String, name: String) -> Entry {
        let path = (directory as NSString).appendingPathComponent(name)
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        let modified = attributes?[.modificationDate] as? Date ?? .distantPast
        var entry = Entry(file: path, modified: modified, result: .failure(DKIMKeyError("not read")))
        let stem = String(name.dropLast(".pem".count))
        guard let dot = stem.lastIndex(of: "."),
            let domain = try? DNSName.domain(String(stem[..<dot])),
            let selector = try? DNSName.selector(String(stem[stem.index(after: dot)...]))
        else {
            entry.result = .failure(DKIMKeyError("the file name must be DOMAIN.SELECTOR.pem (e.g. example.com.mr2026.pem)"))
            return entry
        }
        entry.domain = domain
        entry.selector = selector
        if let mode = attributes?[.posixPermissions] as? Int, mode & 0o077 != 0 {
            entry.warning = "readable by others (mode \(String(mode, radix: 8))); chmod 600 it"
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            entry.result = .failure(DKIMKeyError("cannot be read (permissions?)"))
            return entry
        }
        do throws(DKIMKeyError) {
            entry.result = .success(try DKIMKey(pem: String(decoding: data, as: UTF8.self), domain: domain, selector: selector))
        } catch {
            entry.result = .failure(error)
        }
        return entry
    }
}
