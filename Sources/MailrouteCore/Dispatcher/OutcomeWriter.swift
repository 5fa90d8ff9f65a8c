/// Collects the outcomes that finish while a commit is under way and writes them together,
/// so a busy daemon pays one commit per batch instead of one per message. The first writer
/// to find no commit under way makes it, in its own task, for everyone who joins meanwhile.
actor OutcomeWriter {
    private let store: any QueueBackend
    private var pending: [(claim: ClaimedMessage, outcome: DeliveryOutcome, done: CheckedContinuation<Void, Error>?)] = []
    private var flushing = false

    init(store: any QueueBackend) {
        self.store = store
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
        while !batch.isEmpty {
            do {
                try await store.finish(batch.map { ($0.claim, $0.outcome) })
                for item in batch { item.done?.resume() }
            } catch {
                if first { own = error }
                for item in batch { item.done?.resume(throwing: error) }
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
}
