import Foundation

/// An IPv4 or IPv6 address, as the socket layer gives it. IPv4-mapped IPv6 addresses
/// (`::ffff:10.0.0.1`) are IPv4: otherwise they would pass as "global IPv6".
public enum IPAddress: Sendable, Hashable, CustomStringConvertible {
    case v4(UInt32)
    case v6([UInt8])

    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        self.init(bytes: withUnsafeBytes(of: v6) { Array($0) })
    }

    /// 4 or 16 bytes in network order.
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4:
            self = .v4(bytes.reduce(0) { $0 << 8 | UInt32($1) })
        case 16:
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
                self = .v4(bytes[12...].reduce(0) { $0 << 8 | UInt32($1) })
            } else {
                self = .v6(bytes)
            }
        default:
            return nil
        }
    }

    var bytes: [UInt8] {
        switch self {
        case .v4(let value): [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
        case .v6(let bytes): bytes
        }
    }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        switch self {
        case .v4(let value):
            var address = in_addr(s_addr: value.bigEndian)
            inet_ntop(AF_INET, &address, &buffer, socklen_t(buffer.count))
        case .v6(let bytes):
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
            inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count))
        }
        return String(cString: buffer)
    }
}

/// A network in CIDR form (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32 or /128).
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.trimmingCharacters(in: .whitespaces).split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPAddress(String(parts[0])) else { return nil }
        let width = address.bytes.count * 8
        guard let length = parts.count == 2 ? Int(parts[1]) : width, (0...width).contains(length) else { return nil }
        self.address = address
        self.prefixLength = length
    }

    public func contains(_ other: IPAddress) -> Bool {
        let mine = address.bytes, theirs = other.bytes
        guard mine.count == theirs.count else { return false }
        var left = prefixLength
        for (a, b) in zip(mine, theirs) where left > 0 {
            let mask: UInt8 = left >= 8 ? 0xFF : ~(0xFF >> UInt8(left))
            if a & mask != b & mask { return false }
            left -= 8
        }
        return true
    }

    public var description: String { "\(address)/\(prefixLength)" }
}

/// SPEC §4 "Tenant-supplied hosts": a tenant's server may not be this host, its private
/// networks or the cloud's metadata service, unless the operator listed the network. A name
/// is checked on what it resolves to, at every connection (`CurlMultiEngine`), so a name that
/// later resolves inward is caught; `config add` and `verify` check early for a clear error.
public struct NetworkPolicy: Sendable, Equatable {
    public var allowed: [IPNetwork]

    public init(allowed: [IPNetwork]) {
        self.allowed = allowed
    }

    /// Why `address` is refused, or nil when a tenant's server may be there.
    public func refusal(of address: IPAddress) -> String? {
        guard let kind = Self.inwardKind(address), !allowed.contains(where: { $0.contains(address) }) else { return nil }
        return "\(address) is \(kind); a tenant's server may not be there unless [delivery] allowed_networks lists it"
    }

    /// Why `host` is refused: a literal address, or a name none of whose addresses may be used
    /// as it resolves now (a connection uses only the addresses that may be: `localhost` with
    /// 127.0.0.0/8 listed connects to 127.0.0.1, never to ::1). A name that does not resolve
    /// (yet) is not refused here; it is checked when it is used.
    public func refusal(ofHost host: String) -> String? {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if let literal = IPAddress(bare) { return refusal(of: literal) }
        let reasons = Self.resolve(bare).map { refusal(of: $0) }
        guard !reasons.isEmpty, reasons.allSatisfy({ $0 != nil }) else { return nil }
        var unique: [String] = []
        for case let reason? in reasons where !unique.contains(reason) { unique.append(reason) }
        return "\(host) resolves to \(unique.joined(separator: "; and to "))"
    }

    /// The addresses `name` resolves to now (none when it does not resolve).
    static func resolve(_ name: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var addresses: [IPAddress] = []
        var entry = list
        while let info = entry?.pointee {
            if let address = IPAddress(sockaddr: info.ai_addr) { addresses.append(address) }
            entry = info.ai_next
        }
        return addresses
    }

    /// Which kind of inward address this is, in words for the refusal; nil for a global one.
    static func inwardKind(_ address: IPAddress) -> String? {
        switch address {
        case .v4(let a):
            let first = a >> 24, second = a >> 16 & 0xFF
            if a == 0 || first == 0 { return "an unspecified address (0.0.0.0/8)" }
            if first == 127 { return "a loopback address (127.0.0.0/8)" }
            if first == 10 || (first == 172 && (16...31).contains(second)) || (first == 192 && second == 168) {
                return "a private address (RFC 1918)"
            }
            if first == 100 && (64...127).contains(second) { return "a shared address (100.64.0.0/10, carrier-grade NAT)" }
            if first == 169 && second == 254 { return "a link-local address (169.254.0.0/16, where cloud metadata services live)" }
            if first >= 224 && first <= 239 { return "a multicast address (224.0.0.0/4)" }
            if first >= 240 { return "a reserved or broadcast address (240.0.0.0/4)" }
            return nil
        case .v6(let b):
            if b.allSatisfy({ $0 == 0 }) { return "the unspecified address (::)" }
            if b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return "the loopback address (::1)" }
            if b[0] & 0xFE == 0xFC { return "a private address (fc00::/7)" }
            if b[0] == 0xFE && b[1] & 0xC0 == 0x80 { return "a link-local address (fe80::/10)" }
            if b[0] == 0xFF { return "a multicast address (ff00::/8)" }
            // NAT64 and 6to4 embed an IPv4 address that may itself be inward.
            if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xFF && b[3] == 0x9B, b[4..<12].allSatisfy({ $0 == 0 }),
               let embedded = IPAddress(bytes: Array(b[12...])), let kind = inwardKind(embedded) {
                return "a NAT64 address of \(kind)"
            }
            if b[0] == 0x20 && b[1] == 0x02, let embedded = IPAddress(bytes: Array(b[2..<6])), let kind = inwardKind(embedded) {
                return "a 6to4 address of \(kind)"
            }
            return nil
        }
    }
}

extension IPAddress {
    /// The address of an IPv4 or IPv6 socket address.
    public init?(sockaddr pointer: UnsafePointer<sockaddr>?) {
        guard let pointer else { return nil }
        switch Int32(pointer.pointee.sa_family) {
        case AF_INET:
            let address = pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
            self = .v4(UInt32(bigEndian: address.s_addr))
        case AF_INET6:
            let address = pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
            self.init(bytes: withUnsafeBytes(of: address) { Array($0) })
        default:
            return nil
        }
    }
}
