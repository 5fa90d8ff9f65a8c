import Foundation
import Testing

/// Property-based checks without a package: a seeded generator (SplitMix64), a runner that
/// gives each case its own seed so a failure replays alone, and generators of hostile text.
///
/// Deterministic by default (the same cases on every run). `MAILROUTE_PROPERTY_SEED=N` draws
/// another set; `MAILROUTE_PROPERTY_SCALE=10` runs ten times the cases (and time);
/// `MAILROUTE_PROPERTY_CASE=SEED` runs only the case a failure named.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum Property {
    static let environment = ProcessInfo.processInfo.environment
    static var baseSeed: UInt64 { environment["MAILROUTE_PROPERTY_SEED"].flatMap { UInt64($0) } ?? 0x6D61_696C_726F_7574 }
    static var scale: Double { environment["MAILROUTE_PROPERTY_SCALE"].flatMap { Double($0) } ?? 1 }
    static var onlyCase: UInt64? { environment["MAILROUTE_PROPERTY_CASE"].flatMap { UInt64($0) } }
    /// `MAILROUTE_PROPERTY_TRACE=1`: every case's seed and inputs on stderr as they are drawn,
    /// for a case that crashes the process before it can be reported.
    static let trace = environment["MAILROUTE_PROPERTY_TRACE"] == "1"

    /// FNV-1a, so each property's cases differ from the others' under one base seed.
    static func hash(_ text: String) -> UInt64 {
        text.utf8.reduce(0xCBF2_9CE4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01B3 }
    }

    /// Runs `body` on `count` generated cases, or until `seconds` have passed (whichever comes
    /// first; both scaled). `body` returns the problems it found in its case, empty when the
    /// property held; a thrown error is a problem too. Reports at most three failing cases,
    /// each with the seed that replays it. Returns how many cases ran.
    @discardableResult
    static func check(
        _ name: String, count: Int, seconds: Double = 4, sourceLocation: SourceLocation = #_sourceLocation,
        _ body: (inout Gen) throws -> [String]
    ) -> Int {
        let total = Int(Double(count) * scale)
        let deadline = Date().addingTimeInterval(seconds * scale)
        var failures = 0
        var ran = 0
        let seeds: [UInt64] = onlyCase.map { [$0] } ?? (0..<total).map { baseSeed ^ hash(name) &+ UInt64($0) &* 0x9E37_79B9 }
        for seed in seeds {
            if ran > 0 && Date() > deadline { break }
            var gen = Gen(seed: seed)
            ran += 1
            if trace { FileHandle.standardError.write(Data("\(name): case \(ran) seed \(seed)\n".utf8)) }
            let problems: [String]
            do {
                problems = try body(&gen)
            } catch {
                problems = ["threw \(type(of: error)): \(error)"]
            }
            guard !problems.isEmpty else { continue }
            failures += 1
            if failures <= 3 {
                Issue.record(
                    "\(name): case \(ran) (MAILROUTE_PROPERTY_CASE=\(seed)): \(problems.prefix(5).joined(separator: "; "))\n  input: \(gen.log.joined(separator: "\n  input: "))",
                    sourceLocation: sourceLocation)
            }
        }
        if failures > 3 { Issue.record("\(name): \(failures) failing cases of \(ran)", sourceLocation: sourceLocation) }
        return ran
    }
}

/// One case's randomness, and what it drew (printed with a failure).
struct Gen {
    var rng: SeededRandom
    private(set) var log: [String] = []

    init(seed: UInt64) { rng = SeededRandom(seed: seed) }

    /// Remembers an input for the failure report (truncated: a 50 KB value is not printed whole).
    mutating func note(_ label: String, _ value: Any) {
        let text = String(reflecting: value)
        if Property.trace { FileHandle.standardError.write(Data("  \(label) = \(text)\n".utf8)) }
        log.append("\(label) = \(text.count > 600 ? String(text.prefix(600)) + "… (\(text.count) characters)" : text)")
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    mutating func pick<T>(_ items: [T]) -> T { items[int(0...items.count - 1)] }
    mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) } }

    /// Short lengths mostly, now and then long ones.
    mutating func length(_ typical: Int, max: Int) -> Int {
        chance(0.9) ? int(0...typical) : int(0...max)
    }

    /// Fragments that have broken mail software: line breaks of every kind, NUL and other
    /// controls, what RFC 2047 and MIME treat specially, and what addresses and headers use as
    /// delimiters.
    static let hostileFragments: [String] = [
        "\r", "\n", "\r\n", "\r\n\r\n", "\0", "\t", " ", "  ", "\u{B}", "\u{C}", "\u{1B}", "\u{7F}", "\u{85}", "\u{2028}",
        "\u{2029}", "\u{FEFF}", "\u{200B}", "\u{202E}", "\u{FFFD}", "é", "€", "😀", "👨‍👩‍👧", "e\u{301}", "\u{301}", "ß", "İ", "例",
        "=?", "?=", "=?UTF-8?B?", "=?utf-8?q?=41?=", ":", ";", ",", "<", ">", "@", "\"", "\\", "(", ")", "[", "]", ".", "..",
        "Bcc: evil@attacker.test", "\r\nBcc: evil@attacker.test", "\nX-Injected: 1", "\r\n.\r\n", "--", "=_mr_", "=",
        "To: x@y.test", "a", "Z", "0", "x@y.test", "\"quoted\"", "\\\"",
    ]

    /// Text an enqueuer could put in a TEXT column: hostile fragments, random scalars of every
    /// plane, invalid UTF-8 (decoded, as a client library would, to U+FFFD), long runs.
    mutating func hostileText(_ typical: Int = 12, max: Int = 400) -> String {
        var out = ""
        for _ in 0..<length(typical, max: max) {
            switch int(0...9) {
            case 0...3: out += pick(Self.hostileFragments)
            case 4, 5: out += String(pick(Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.")))
            case 6: out.unicodeScalars.append(randomScalar())
            case 7: out += String(decoding: bytes(int(1...6)), as: UTF8.self)
            case 8: out += String(repeating: pick(["x", " ", "é", "\t", "ab "]), count: int(1...(chance(0.1) ? 1200 : 80)))
            default: out += String(pick(Array("!#$%&'*+/=?^_`{|}~")))
            }
        }
        return out
    }

    /// Like `hostileText`, but without CR, LF or other controls: what passes the schema's
    /// CHECKs and must then be encoded, not refused.
    mutating func printableText(_ typical: Int = 12, max: Int = 400) -> String {
        String(String.UnicodeScalarView(hostileText(typical, max: max).unicodeScalars.filter {
            !($0.value < 0x20 || $0.value == 0x7F || (0x80...0x9F).contains($0.value) || $0 == "\u{2028}" || $0 == "\u{2029}")
        }))
    }

    mutating func randomScalar() -> Unicode.Scalar {
        while true {
            let value: UInt32
            switch int(0...3) {
            case 0: value = UInt32(int(0...0x7F))
            case 1: value = UInt32(int(0x80...0x7FF))
            case 2: value = UInt32(int(0x800...0xFFFF))
            default: value = UInt32(int(0x10000...0x10FFFF))
            }
            if let scalar = Unicode.Scalar(value) { return scalar }  // not a surrogate
        }
    }

    // MARK: - Addresses

    static let validLocals = ["a", "jane.doe", "x+tag", "o'brien", "_", "1", "\"john doe\"", "\"a@b\"", "\"a\\\"b\"", "ü"]
    static let validDomains = ["example.com", "mail.example.co.uk", "xn--bcher-kva.de", "bücher.de", "例え.テスト", "[127.0.0.1]",
                               "[IPv6:2001:db8::1]", "localhost", "a-b.c", "EXAMPLE.COM"]

    /// An address, well formed or broken in one of the ways people and attackers break them.
    mutating func address() -> String {
        let local: String
        switch int(0...4) {
        case 0, 1: local = pick(Self.validLocals)
        case 2: local = String((0..<int(1...70)).map { _ in pick(Array("abc.+-_!#$%&'*/=?^`{|}~")) })
        case 3: local = "\"" + hostileText(4, max: 70) + "\""
        default: local = hostileText(4, max: 70)
        }
        var domain: String
        switch int(0...4) {
        case 0, 1: domain = pick(Self.validDomains)
        case 2: domain = (0..<int(1...5)).map { _ in String((0..<int(0...(chance(0.1) ? 80 : 10))).map { _ in pick(Array("abc-9é")) }) }.joined(separator: ".")
        case 3: domain = "[" + hostileText(3, max: 40) + "]"
        default: domain = hostileText(4, max: 300)
        }
        if chance(0.05) { domain = String(repeating: "a.", count: int(100...200)) + "com" }
        var spec = chance(0.95) ? "\(local)@\(domain)" : pick(["\(local)", "\(local)@", "@\(domain)", "\(local)@@\(domain)", "\(local)@\(domain)@x"])
        if chance(0.1) { spec += pick(Self.hostileFragments) }
        switch int(0...5) {
        case 0, 1, 2: return spec
        case 3: return "\(hostileText(5, max: 120)) <\(spec)>"
        case 4: return "\"\(hostileText(5, max: 120))\" <\(spec)>"
        default: return pick(["<\(spec)>", "Name <\(spec)", "\(spec)>", "a <b> <\(spec)>", " \(spec) ", "\(spec), other@example.com"])
        }
    }

    /// A JSON array of addresses as an enqueuer might write it: JSON from generated strings,
    /// or raw text with escapes (`\u0000`, lone surrogates), wrong types and broken syntax.
    mutating func addressJSON() -> String {
        switch int(0...9) {
        case 0...6:
            let list = (0..<(chance(0.9) ? int(1...3) : int(0...40))).map { _ in address() }
            return String(decoding: try! JSONSerialization.data(withJSONObject: list), as: UTF8.self)
        case 7:
            return pick([#"["a@example.com\u0000"]"#, #"["\ud800@example.com"]"#, #"["a@example.com", 1]"#, #"[["a@example.com"]]"#,
                         #"{"a": "b"}"#, #""a@example.com""#, "[", "", "null", "[]", #"["\"a\r\nb\"@example.com"]"#,
                         #"["a@example.com\r\nBcc: evil@attacker.test"]"#, #"["\"x\r\nBcc: e@attacker.test\"@example.com"]"#,
                         #"["=?UTF-8?B?QmNjOiBl?= <a@example.com>"]"#, #"["\udfff\ud800 <a@example.com>"]"#])
        default:
            return hostileText(8, max: 100)
        }
    }

    /// A headers object: mostly valid names with hostile values, some hostile names, forbidden
    /// names in any case, and JSON that is not an object.
    mutating func headersJSON() -> String? {
        switch int(0...9) {
        case 0, 1: return nil
        case 2...7:
            var object: [String: String] = [:]
            for _ in 0..<int(0...4) {
                let name: String
                switch int(0...5) {
                case 0, 1, 2: name = pick(["X-Campaign", "List-Unsubscribe", "X-Priority", "In-Reply-To", "References", "X-A", "x-a"])
                case 3: name = pick(["From", "to", "BCC", "Cc", "Date", "Message-ID", "Subject", "Content-Type", "MIME-Version",
                                     "Reply-To", "Sender", "Return-Path", "DKIM-Signature", "Content-Transfer-Encoding"])
                case 4: name = "X-" + String(repeating: "N", count: int(1...(chance(0.3) ? 1200 : 60)))
                default: name = hostileText(3, max: 30)
                }
                object[name] = chance(0.7) ? printableText(8, max: 300) : hostileText(8, max: 300)
            }
            return String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
        case 8:
            return pick([#"{"X-A": 1}"#, #"{"X-A": null}"#, #"{"X-A": ["v"]}"#, #"{"X-A": "\u0000"}"#, #"{"X-A": "\ud800"}"#,
                         #"{"\ud800": "v"}"#, #"{"X-A": "a", "X-A": "b"}"#, "[]", "{", "\"x\"", #"{"": "v"}"#, #"{"X A": "v"}"#,
                         #"{"X-A:": "v"}"#, #"{"X-A": "v\r\nBcc: evil@attacker.test"}"#, #"{"X-A\r\nBcc": "e@attacker.test"}"#])
        default:
            return hostileText(6, max: 60)
        }
    }
}
