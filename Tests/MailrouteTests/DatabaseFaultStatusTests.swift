import GRDB
import Testing

@testable import MailrouteCore

/// What the dispatcher says about a failing database: which fault, and the STATUS line.
@Suite struct DatabaseFaultStatusTests {
    @Test func sqliteErrorsAreSortedIntoWhatTheOperatorDoes() {
        #expect(DatabaseFault(DatabaseError(resultCode: .SQLITE_FULL)) == .diskFull)
        #expect(DatabaseFault(DatabaseError(resultCode: .SQLITE_BUSY)) == .locked)
        #expect(DatabaseFault(DatabaseError(resultCode: .SQLITE_IOERR)) == .unreachable)
        #expect(DatabaseFault(MailrouteError.notFound("x")) == .unreachable)
    }

    /// The outcome writer waits for these and gives up at once on the others: a write refused
    /// for what it holds would hold every outcome (and every claim) behind it for ever.
    @Test func onlyWhatMaySucceedLaterIsTriedAgain() {
        for code in [ResultCode.SQLITE_FULL, .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_IOERR] {
            #expect(DatabaseFault.isTransient(DatabaseError(resultCode: code)), "\(code)")
        }
        for code in [ResultCode.SQLITE_CONSTRAINT, .SQLITE_MISMATCH, .SQLITE_TOOBIG, .SQLITE_ERROR] {
            #expect(!DatabaseFault.isTransient(DatabaseError(resultCode: code)), "\(code)")
        }
        #expect(DatabaseFault.isTransient(PostgresStore.Timeout()))
        #expect(!DatabaseFault.isTransient(MailrouteError.conflict("x")))
    }

    @Test func aFaultOfAnotherKindIsSaidAgainButTheOutageKeepsItsStart() {
        var health = DatabaseHealth()
        #expect(health.failed(at: 100, fault: .unreachable) == .lost)
        #expect(health.failed(at: 101, fault: .unreachable) == .quiet)
        #expect(health.failed(at: 102, fault: .diskFull) == .lost, "the disk filled meanwhile: news")
        #expect(health.fault == .diskFull)
        #expect(health.lostSince == 100)
        #expect(health.answered(at: 110) == 10)
        #expect(health.fault == nil)
    }

    @Test func statusLeadsWithTheFaultAndKeepsTheCounts() {
        var counts = QueueCounts()
        (counts.queued, counts.deferred, counts.sending, counts.sentLastMinute) = (3, 1, 2, 7)
        #expect(Dispatcher.statusLine(counts: counts, inError: 1, fault: nil, unrecorded: 0)
            == "queued 3, deferred 1, sending 2, sent last minute 7, configurations in error 1")
        let full = Dispatcher.statusLine(counts: counts, inError: 0, fault: (.diskFull, 12), unrecorded: 2)
        #expect(full.hasPrefix("DISK FULL: queue database cannot be written for 12 s, delivery paused (free space"))
        #expect(full.contains("2 outcome(s) waiting to be recorded; queued 3"))
        #expect(Dispatcher.statusLine(counts: nil, inError: nil, fault: (.unreachable, 0), unrecorded: 0).hasPrefix("queue database unreachable"))
    }
}
