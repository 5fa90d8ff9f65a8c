import GRDB
import PostgresNIO

/// Why the queue's database refused a write, as far as the daemon acts on it: what the log
/// and STATUS tell the operator to do differs (free space, find the long transaction, bring
/// the server back); the daemon itself does the same for all three (stops claiming, keeps
/// the outcomes in hand, tries again).
public enum DatabaseFault: Sendable, Equatable {
    /// SQLITE_FULL, or PostgreSQL's disk_full (53100): reads still work, writes cannot.
    case diskFull
    /// Another connection held SQLite's write lock for longer than the busy wait.
    case locked
    case unreachable

    public init(_ error: Error) {
        switch error {
        case let error as DatabaseError where error.resultCode == .SQLITE_FULL:
            self = .diskFull
        case let error as DatabaseError where error.resultCode == .SQLITE_BUSY || error.resultCode == .SQLITE_LOCKED:
            self = .locked
        case let error as PSQLError where error.serverInfo?[.sqlState] == "53100":
            self = .diskFull
        default:
            self = .unreachable
        }
    }

    /// The start of the STATUS line and of the log line.
    var headline: String {
        switch self {
        case .diskFull: "DISK FULL: queue database cannot be written"
        case .locked: "queue database locked by another connection"
        case .unreachable: "queue database unreachable"
        }
    }

    /// What the operator does about it.
    var fix: String {
        switch self {
        case .diskFull: "free space on its filesystem; delivery resumes by itself"
        case .locked: "end the other connection's long transaction; delivery resumes by itself"
        case .unreachable: "retrying"
        }
    }
}
