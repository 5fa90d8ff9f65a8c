// libFuzzer entry over the address parser and host names (issue 12 item 4); built by
// scripts/fuzz-address with the three Foundation-only source files it needs.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let parsed = try? EmailAddress(parsing: text) {
        // What is accepted is canonical printable ASCII, safe for an envelope and a header.
        precondition(parsed.address.unicodeScalars.allSatisfy { (0x20...0x7E).contains($0.value) }, "not printable: \(parsed.address)")
        let again = try? EmailAddress(parsing: parsed.address)
        precondition(again?.address == parsed.address && again?.displayName == nil, "not canonical: \(parsed.address)")
        if let name = parsed.displayName {
            precondition(!name.unicodeScalars.contains { $0 == "\r" || $0 == "\n" || $0 == "\0" }, "line break in the name")
        }
    }
    _ = try? DNSName.host(text)
    _ = try? DNSName.domain(text)
    return 0
}
