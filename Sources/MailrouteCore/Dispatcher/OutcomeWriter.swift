/// Collects the outcomes that finish while a commit is under way and writes them together,
/// so a busy daemon pays one commit per batch instead of one per message.
actor OutcomeWriter {
    private let store: QueueStore
    private var pending: [(id: Int64, outcome: DeliveryOutcome, done: CheckedContinuation<Void, Error>)] = []
    private var flushing = false

    init(store: QueueStore) {
        self.store = store
    }

    func write(id: Int64, outcome: DeliveryOutcome) async throws {
        try await withCheckedThrowingContinuation { (done: CheckedContinuation<Void, Error>) in
            pending.append((id, outcome, done))
            if !flushing {
                flushing = true
                Task { await flush() }
            }
        }
    }

    private func flush() async {
        while !pending.isEmpty {
            let batch = pending
            pending.removeAll()
            do {
                try await store.finish(batch.map { ($0.id, $0.outcome) })
                for item in batch { item.done.resume() }
            } catch {
                for item in batch { item.done.resume(throwing: error) }
            }
        }
        flushing = false
    }
}
