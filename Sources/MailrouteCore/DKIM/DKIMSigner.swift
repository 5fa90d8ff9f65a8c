import Crypto
import Foundation

/// DKIM signing (RFC 6376) with relaxed/relaxed canonicalization: a pure function from the
/// composed message, the keys and the time to the message with its DKIM-Signature fields.
public enum DKIMSigner {
    /// Signed when present. Over-signing `from` (listing it once more than it occurs) makes a
    /// second From added in transit break the signature. The List-Unsubscribe pair is signed
    /// because RFC 8058 one-click unsubscribe requires it.
    static let signedHeaders = [
        "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version", "content-type",
        "content-transfer-encoding", "in-reply-to", "references", "list-unsubscribe", "list-unsubscribe-post",
    ]
    static let overSigned: Set<String> = ["from"]

    /// Returns `message` with one DKIM-Signature field per key prepended, in `keys` order.
    public static func sign(_ message: [UInt8], keys: [DKIMKey], now: Date) throws -> [UInt8] {
        guard !keys.isEmpty else { return message }
        let (fields, bodyStart) = HeaderFields.parse(message)
        let bodyHash = Data(Canonical.relaxedBodyHash(message[bodyStart...])).base64EncodedString()

        var names: [String] = []
        var signedFields: [[UInt8]] = []
        for name in signedHeaders {
            // When a name occurs more than once, a verifier takes instances from the bottom up.
            let instances = fields.filter { $0.lowercasedName == name }.reversed()
            for field in instances {
                names.append(name)
                signedFields.append(Canonical.relaxedHeader(field.raw))
            }
            if overSigned.contains(name) { names.append(name) }
        }

        // Folded before a colon, which h= allows (RFC 6376 §3.5), to keep lines short.
        var hList = ""
        var lineLength = 3
        for (index, name) in names.enumerated() {
            if index > 0 {
                if lineLength + name.count + 1 > 72 {
                    hList += "\r\n\t"
                    lineLength = 1
                }
                hList += ":"
                lineLength += 1
            }
            hList += name
            lineLength += name.count
        }

        var prefix: [UInt8] = []
        for key in keys {
            let value = "v=1; a=\(key.algorithm.rawValue); c=relaxed/relaxed; d=\(key.domain); s=\(key.selector);\r\n"
                + "\tt=\(Int(now.timeIntervalSince1970));\r\n"
                + "\th=\(hList);\r\n"
                + "\tbh=\(bodyHash);\r\n"
                + "\tb="
            let unsigned = Array("DKIM-Signature: \(value)".utf8)
            var hasher = SHA256()
            for field in signedFields { hasher.update(data: field) }
            // The signature field itself, with an empty b= and without its final CRLF (§3.7).
            var own = Canonical.relaxedHeader(unsigned[...])
            own.removeLast(2)
            hasher.update(data: own)
            let signature = Data(try key.sign(headerHash: hasher.finalize())).base64EncodedString()
            prefix += unsigned + Array(fold(signature).utf8) + [13, 10]
        }
        return prefix + message
    }

    /// b= in lines of 72, so the field stays far under 998 octets per line.
    static func fold(_ base64: String) -> String {
        var lines: [Substring] = []
        var rest = base64[...]
        while !rest.isEmpty {
            lines.append(rest.prefix(72))
            rest = rest.dropFirst(72)
        }
        return lines.joined(separator: "\r\n\t")
    }
}

/// A message's header fields, as they are on the wire.
struct HeaderFields {
    struct Field {
        /// The whole field including folding, without the final CRLF.
        var raw: ArraySlice<UInt8>
        var lowercasedName: String
    }

    /// The fields, and where the body starts (after the empty line).
    static func parse(_ message: [UInt8]) -> (fields: [Field], bodyStart: Int) {
        var fields: [Field] = []
        var index = 0
        var fieldStart = 0
        let end = message.count
        func close(_ upTo: Int) {
            guard upTo > fieldStart else { return }
            let raw = message[fieldStart..<upTo]
            let name = raw.prefix { $0 != UInt8(ascii: ":") }
            fields.append(Field(raw: raw, lowercasedName: String(decoding: name, as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased()))
        }
        /// The next CRLF from `start`: a bare CR is part of a field, not its end.
        func nextCRLF(_ start: Int) -> Int? {
            var from = start
            while let cr = message[from...].firstIndex(of: 13) {
                if cr + 1 < end, message[cr + 1] == 10 { return cr }
                from = cr + 1
            }
            return nil
        }
        while index < end {
            guard let cr = nextCRLF(index) else {
                // No CRLF: the rest is one last field and there is no body.
                close(end)
                return (fields, end)
            }
            if cr == index {
                // The empty line: every field before it is closed already.
                return (fields, cr + 2)
            }
            let next = cr + 2
            if next < end, message[next] == 32 || message[next] == 9 {
                index = next  // folded: the field goes on
                continue
            }
            close(cr)
            fieldStart = next
            index = next
        }
        return (fields, end)
    }
}

/// RFC 6376 §3.4.2 and §3.4.4.
enum Canonical {
    static func isWSP(_ b: UInt8) -> Bool { b == 32 || b == 9 }

    /// `name:value` + CRLF: name lowercased, the value unfolded, runs of whitespace made one
    /// space, whitespace at both ends of the value and around the colon removed.
    static func relaxedHeader(_ raw: ArraySlice<UInt8>) -> [UInt8] {
        guard let colon = raw.firstIndex(of: UInt8(ascii: ":")) else { return Array(raw) + [13, 10] }
        var out: [UInt8] = []
        out.reserveCapacity(raw.count + 2)
        // The name is unfolded too: no CR or LF survives canonicalization.
        for b in raw[..<colon] where !isWSP(b) && b != 13 && b != 10 {
            out.append(b >= 65 && b <= 90 ? b + 32 : b)
        }
        out.append(UInt8(ascii: ":"))
        var pendingSpace = false
        var started = false
        for b in raw[(colon + 1)...] {
            if b == 13 || b == 10 { continue }
            if isWSP(b) {
                pendingSpace = started
                continue
            }
            if pendingSpace { out.append(32) }
            pendingSpace = false
            started = true
            out.append(b)
        }
        out += [13, 10]
        return out
    }

    /// SHA-256 of the relaxed body, computed in one pass: whitespace at line ends dropped,
    /// runs made one space, empty lines at the end dropped, a final CRLF when the body is not
    /// empty. The canonical body goes through a 64 KiB buffer written through a pointer
    /// (array appends cost more than the hash itself, perf), hashed whenever it fills, so a
    /// large attachment is never copied whole.
    static func relaxedBodyHash(_ body: ArraySlice<UInt8>) -> SHA256.Digest {
        var hasher = SHA256()
        let capacity = 65_536
        let out = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: capacity)
        defer { out.deallocate() }
        var o = 0
        /// Room for `count` more bytes, hashing what the buffer holds if need be.
        func reserve(_ count: Int) {
            guard o + count > capacity else { return }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: out[..<o])))
            o = 0
        }
        body.withUnsafeBufferPointer { bytes in
            let n = bytes.count
            var emptyLines = 0
            var i = 0
            while i < n {
                var pendingSpace = false
                var hasContent = false
                var terminated = false
                while i < n {
                    let b = bytes[i]
                    if b == 13, i + 1 < n, bytes[i + 1] == 10 {
                        i += 2
                        terminated = true
                        break
                    }
                    i += 1
                    if isWSP(b) {
                        pendingSpace = true
                        continue
                    }
                    if !hasContent {
                        hasContent = true
                        // Empty lines within the body stay.
                        for _ in 0..<emptyLines {
                            reserve(2)
                            out[o] = 13
                            out[o + 1] = 10
                            o += 2
                        }
                        emptyLines = 0
                    }
                    reserve(2)
                    if pendingSpace {
                        out[o] = 32
                        o += 1
                    }
                    pendingSpace = false
                    out[o] = b
                    o += 1
                }
                if hasContent {
                    reserve(2)
                    out[o] = 13
                    out[o + 1] = 10
                    o += 2
                } else if terminated {
                    emptyLines += 1
                }
            }
        }
        hasher.update(bufferPointer: UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: out[..<o])))
        return hasher.finalize()
    }
}
