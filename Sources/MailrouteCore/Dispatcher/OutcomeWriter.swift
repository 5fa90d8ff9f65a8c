/// Collects the outcomes that finish while a commit is under way and writes them together,
/// so a busy daemon pays one commit per batch instead of one per message. The first writer
/// to find no commit under way makes it, in its own task, for everyone who joins meanwhile.
///
/// A commit that fails (the disk full, the database away) keeps its outcomes and tries again
/// until it lands: a message already sent whose `sent` were dropped would go out again when its
/// lease ran out, and again at every later failure. (A write refused for what it holds fails
/// the same way every time: given up at once, as before.) Meanwhile the dispatcher claims nothing
/// (`Dispatcher.outcomesFailed`), so the rows in hand are not taken twice. Only at shutdown are
/// they given up; those rows are then sent again after their lease: the duplicates
/// at-least-once allows, no more than were in flight.
actor OutcomeWriter {
    private let store: any QueueBackend
    private let stop: StopFlag
    private weak var dispatcher: Dispatcher?
    private var pending: [(claim: ClaimedMessage, outcome: DeliveryOutcome, done: CheckedContinuation<Void, Error>?)] = []
    private var flushing = false

    static let firstRetry = 0.25
    static let maxRetry = 5.0

    init(store: any QueueBackend, stop: StopFlag) {
        self.store = store
        self.stop = stop
    }

    /// Who hears that outcomes wait for the database, and that they were written.
    func report(to dispatcher: Dispatcher) {
        self.dispatcher = dispatcher
    }

    func write(_ claim: ClaimedMessage, outcome: DeliveryOutcome) async throws {
        if flushing {
            try await withCheckedThrowingContinuation { done in pending.append((claim, outcome, done)) }
            return
        }
        flushing = true
        defer { flushing = false }
        var batch = [(claim: claim, outcome: outcome, done: CheckedContinuation<Void, Error>?.none)]
        var own: Error?
        var first = true
        var retry = Self.firstRetry
        var failing = false
        while !batch.isEmpty {
            do {
                try await store.finish(batch.map { ($0.claim, $0.outcome) })
                for item in batch { item.done?.resume() }
                if failing { await dispatcher?.outcomesSettled(recorded: true) }
                (failing, retry) = (false, Self.firstRetry)
            } catch {
                if !stop.isSet && DatabaseFault.isTransient(error) {
                    // Kept, with whatever finishes meanwhile, for the next try.
                    failing = true
                    await dispatcher?.outcomesFailed(error, unrecorded: batch.count + pending.count)
                    await pause(seconds: retry)
                    retry = min(Self.maxRetry, retry * 2)
                    batch += pending
                    pending.removeAll()
                    continue
                }
                if first { own = error }
                for item in batch { item.done?.resume(throwing: error) }
                if failing { await dispatcher?.outcomesSettled(recorded: false) }
                (failing, retry) = (false, Self.firstRetry)
            }
            first = false
            // Whatever arrived during that commit goes in the next one, a moment later
            // (`QueuePacing.commitGap`: the enqueuers' turn at SQLite's lock, fuller batches on a server).
            if !pending.isEmpty { try? await Task.sleep(for: store.pacing.commitGap) }
            batch = pending
            pending.removeAll()
        }
        if let own { throw own }
    }

    /// Sleeps, in short steps so that a shutdown does not wait out the whole pause.
    private func pause(seconds: Double) async {
        var left = seconds
        while left > 0 && !stop.isSet {
            try? await Task.sleep(for: .milliseconds(Int(min(left, 0.25) * 1000)))
            left -= 0.25
        }
    }
}
