import CSystemd
import Foundation
import Logging

/// swift-log backend: structured journal entries when stderr is the journal, otherwise one
/// `key=value` line per event on stderr (prefixed `<N>` under systemd, so journald still
/// gets the priority).
public struct MailrouteLogHandler: LogHandler {
    public enum Sink: Sendable, Equatable {
        case journal
        case stderr(priorityPrefix: Bool)
    }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let sink: Sink

    public init(label: String, sink: Sink) {
        self.label = label
        self.sink = sink
    }

    /// `auto` means the journal when stderr is connected to it (`$JOURNAL_STREAM` names
    /// stderr's device and inode), because sd_journal_sendv succeeds silently without journald.
    /// `journal` without a journald to take the entries falls back to stderr with a warning,
    /// for the same reason: otherwise every line would be lost without a word.
    public static func sink(
        for target: MailrouteConfiguration.Log.Target, environment: [String: String] = ProcessInfo.processInfo.environment,
        journalSocket: String = journalSocketPath
    ) -> (sink: Sink, warning: String?) {
        let underSystemd = stderrIsJournal(environment)
        switch target {
        case .journal:
            guard isSocket(journalSocket) else {
                return (.stderr(priorityPrefix: underSystemd),
                        "[log] target = \"journal\" but no journal is running (no \(journalSocket)); logging to stderr instead")
            }
            return (.journal, nil)
        case .stderr: return (.stderr(priorityPrefix: underSystemd), nil)
        case .auto: return (underSystemd ? .journal : .stderr(priorityPrefix: false), nil)
        }
    }

    /// Where journald takes native entries.
    public static let journalSocketPath = "/run/systemd/journal/socket"

    static func isSocket(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFSOCK
    }

    static func stderrIsJournal(_ environment: [String: String]) -> Bool {
        guard let stream = environment["JOURNAL_STREAM"] else { return false }
        let parts = stream.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(2, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        switch sink {
        case .journal:
            Self.sendToJournal(Self.journalFields(level: event.level, message: "\(event.message)", metadata: all, identifier: label))
        case .stderr(let prefix):
            let line = Self.stderrLine(
                level: event.level, message: "\(event.message)", metadata: all, priorityPrefix: prefix, at: Date())
            Self.writeLine(line)
        }
    }

    /// One write(2) per line (atomic on a pipe up to 4 KiB, so threads do not interleave lines), straight from
    /// the string's bytes (FileHandle and a Data copy per delivery line showed in perf).
    static func writeLine(_ line: String) {
        var text = line + "\n"
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return  // stderr gone: nothing better to do with a log line
                }
            }
        }
    }

    /// Under systemd (`<N>` prefix) journald stamps each line itself; anywhere else the line
    /// starts with an RFC 3339 UTC time and the level, as people reading a terminal or a file expect.
    static func stderrLine(level: Logger.Level, message: String, metadata: Logger.Metadata, priorityPrefix: Bool, at time: Date) -> String {
        let line = Self.line(message: message, metadata: metadata)
        if priorityPrefix { return "<\(syslogPriority(level))>" + line }
        return "\(rfc3339(time)) \(level.rawValue) \(line)"
    }

    /// `2026-12-01T08:40:59.123Z`, without a DateFormatter per line.
    static func rfc3339(_ time: Date) -> String {
        let seconds = time.timeIntervalSince1970
        var whole = time_t(seconds.rounded(.down))
        var parts = tm()
        gmtime_r(&whole, &parts)
        let millis = min(999, Int((seconds - seconds.rounded(.down)) * 1000))
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }

    /// RFC 5424 severities, as journald's PRIORITY wants them.
    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// SPEC §7's order for a delivery line; other keys follow alphabetically.
    static let order = ["id", "tenant", "config", "route", "to", "outcome", "code", "response", "delay", "attempts"]
    private static let rank = Dictionary(uniqueKeysWithValues: order.enumerated().map { ($1, $0) })

    /// `message key=value key="two words"`, values quoted when they need it. One line per
    /// delivery attempt: written for speed (it was a tenth of the daemon's CPU in perf).
    static func line(message: String, metadata: Logger.Metadata) -> String {
        var fields = metadata.map { (key: shortKey($0.key), value: $0.value) }
        fields.sort { a, b in
            let (ra, rb) = (rank[a.key] ?? order.count, rank[b.key] ?? order.count)
            return ra != rb ? ra < rb : a.key < b.key
        }
        var out = message
        out.reserveCapacity(message.utf8.count + fields.count * 24)
        for field in fields {
            out += " "
            out += field.key
            out += "="
            appendQuoted(field.value.description, to: &out)
        }
        return out
    }

    /// `mailroute.id` prints as `id`; the prefix only matters in the journal.
    static func shortKey(_ key: String) -> String {
        key.hasPrefix("mailroute.") ? String(key.utf8.dropFirst("mailroute.".utf8.count))! : key
    }

    static func quote(_ value: String) -> String {
        var out = ""
        appendQuoted(value, to: &out)
        return out
    }

    /// Quoted when empty or holding a blank, `"`, `=`, `\` or a line break; inside quotes `\`,
    /// `"`, CR and LF are escaped, so a value never ends the line.
    static func appendQuoted(_ value: String, to out: inout String) {
        var needs = value.isEmpty
        var nonASCII = false
        for b in value.utf8 where !needs {
            needs = b == 0x20 || b == 0x22 || b == 0x3D || b == 0x5C || b == 0x0A || b == 0x0D || b == 0x0B || b == 0x0C
            nonASCII = nonASCII || b >= 0x80
        }
        if !needs && nonASCII { needs = value.unicodeScalars.contains(where: isLineBreak) }
        guard needs else {
            out += value
            return
        }
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case _ where isLineBreak(scalar): out += "\\u{\(String(scalar.value, radix: 16))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// Line breaks beyond CR and LF that a terminal or a log reader may honour.
    private static func isLineBreak(_ scalar: Unicode.Scalar) -> Bool {
        scalar == "\u{85}" || scalar == "\u{2028}" || scalar == "\u{2029}" || scalar == "\u{0B}" || scalar == "\u{0C}"
    }

    /// Journal fields: MESSAGE (the stderr line, so both views read alike), PRIORITY,
    /// SYSLOG_IDENTIFIER, and every metadata key upper-cased with `.` and `-` as `_`
    /// (`mailroute.id` → `MAILROUTE_ID`), which `journalctl MAILROUTE_ID=42` matches.
    static func journalFields(level: Logger.Level, message: String, metadata: Logger.Metadata, identifier: String) -> [String] {
        var fields = [
            "MESSAGE=\(line(message: message, metadata: metadata))",
            "PRIORITY=\(syslogPriority(level))",
            "SYSLOG_IDENTIFIER=\(identifier)",
        ]
        for key in metadata.keys.sorted() {
            let name = journalFieldName(key)
            guard !name.isEmpty else { continue }
            fields.append("\(name)=\(metadata[key]!)")
        }
        return fields
    }

    /// Journal field names are `[A-Z0-9_]`, not starting with `_` or a digit.
    static func journalFieldName(_ key: String) -> String {
        var name = String(key.uppercased().unicodeScalars.map { scalar -> Character in
            ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) ? Character(scalar) : "_"
        })
        while name.first == "_" || name.first?.isNumber == true { name.removeFirst() }
        if !name.hasPrefix("MAILROUTE_") { name = "MAILROUTE_" + name }
        return String(name.prefix(64))
    }

    static func sendToJournal(_ fields: [String]) {
        // sd_journal_sendv takes each field as raw bytes, so values may hold newlines.
        let buffers = fields.map { Array($0.utf8) }
        let pointers: [UnsafeMutableRawPointer] = buffers.map { bytes in
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes.count), alignment: 1)
            bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            return p
        }
        defer { pointers.forEach { $0.deallocate() } }
        var vectors = zip(pointers, buffers).map { iovec(iov_base: $0, iov_len: $1.count) }
        _ = sd_journal_sendv(&vectors, Int32(vectors.count))
    }
}
