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
        case _ where Self.sqlState(error) == "53100":
            self = .diskFull
        default:
            self = .unreachable
        }
    }

    /// Whether the same write may succeed later: the disk, the lock, the connection. A write the
    /// database refuses for what it holds (a constraint, a value it cannot store) fails the same
    /// way every time, and waiting for it would hold up everything behind it.
    public static func isTransient(_ error: Error) -> Bool {
        switch error {
        case let error as DatabaseError:
            return [.SQLITE_FULL, .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_IOERR, .SQLITE_CANTOPEN, .SQLITE_NOMEM,
                    .SQLITE_PROTOCOL, .SQLITE_READONLY].contains(error.resultCode)
        case is PSQLError, is PostgresStore.Failure:
            // No SQLSTATE: the server never answered (the connection). Otherwise: connection (08),
            // resources (53: disk full, out of memory), shutdown (57), system (58), conflicts (40).
            guard let state = sqlState(error) else { return true }
            return ["08", "53", "57", "58", "40"].contains(String(state.prefix(2)))
        case is PostgresStore.Timeout:
            return true
        default:
            return false
        }
    }

    private static func sqlState(_ error: Error) -> String? {
        switch error {
        case let error as PSQLError: error.serverInfo?[.sqlState]
        case let error as PostgresStore.Failure: error.sqlState
        default: nil
        }
    }

    /// The start of the STATUS line and of the log line.
    public var headline: String {
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
