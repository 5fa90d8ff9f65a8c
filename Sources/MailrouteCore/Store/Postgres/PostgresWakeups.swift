import Foundation
import Logging
import PostgresNIO
import Synchronization

/// LISTEN/NOTIFY as the daemon's doorbell, a poll as the safety net (the dispatcher's loop
/// looks at least every `poll_interval_s`).
///
/// Enqueuers NOTIFY only while some daemon is asleep (`daemons.asleep`, read by the INSERT
/// trigger): a NOTIFY takes a database-wide lock held through the commit, so NOTIFY on every
/// INSERT would serialize every enqueuer's commit, fsync included. A draining daemon looks at
/// the queue after every claim anyway and needs no hint; an idle one marks itself asleep and
/// is woken by the next INSERT. Changes of configurations and routes always notify (rare).
final class PostgresWakeups: QueueWakeups {
    private let store: PostgresStore
    private let configuration: PostgresConnection.Configuration
    private let doorbell: Doorbell
    private let rung = Atomic<Bool>(true)
    private let stopped = Atomic<Bool>(false)
    /// What the daemon last asked to be (asleep or not), for the task that writes it.
    private let wanted = Mutex<Bool?>(nil)
    private let states: AsyncStream<Bool>
    private let statesInput: AsyncStream<Bool>.Continuation

    init(store: PostgresStore, configuration: PostgresConnection.Configuration, doorbell: Doorbell) {
        self.store = store
        self.configuration = configuration
        self.doorbell = doorbell
        (states, statesInput) = AsyncStream.makeStream(of: Bool.self, bufferingPolicy: .bufferingNewest(1))
    }

    func changed() -> Bool { rung.exchange(false, ordering: .acquiringAndReleasing) }

    func setQuiet(_ quiet: Bool) {
        let asleep = !quiet
        let changed = wanted.withLock { current -> Bool in
            defer { current = asleep }
            return current != asleep
        }
        if changed { statesInput.yield(asleep) }
    }

    func cancel() {
        stopped.store(true, ordering: .releasing)
        statesInput.finish()
    }

    private func poke() {
        rung.store(true, ordering: .releasing)
        doorbell.ring()
    }

    func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.listen() }
            group.addTask { await self.writeStates() }
            await group.next()
            group.cancelAll()
        }
    }

    /// Writes asleep or awake as the daemon goes idle or busy. After marking itself asleep it
    /// looks once more: a row committed just before the mark sent no NOTIFY.
    private func writeStates() async {
        for await asleep in states {
            if Task.isCancelled { return }
            do {
                try await store.setAsleep(asleep)
                if asleep { poke() }
            } catch {
                // Forgotten, so that the loop's next word (it says it every cycle) writes again;
                // meanwhile the poll finds new rows.
                wanted.withLock { $0 = nil }
            }
        }
    }

    /// One connection of its own, LISTENing on both channels; reconnected with backoff when
    /// lost, with a look at the queue after each reconnection (what was sent meanwhile is lost).
    private func listen() async {
        var backoff = 0.25
        while !Task.isCancelled && !stopped.load(ordering: .acquiring) {
            do {
                let connection = try await PostgresConnection.connect(
                    configuration: configuration, id: 1, logger: Logger(label: "mailroute.listen", factory: { _ in SwiftLogNoOpLogHandler() }))
                defer { Task.detached { try? await connection.close() } }
                backoff = 0.25
                try await connection.listen(on: "mailroute_queue") { queue in
                    try await connection.listen(on: "mailroute_routing") { routing in
                        poke()
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            group.addTask { for try await _ in queue { self.poke() } }
                            group.addTask { for try await _ in routing { self.poke() } }
                            try await group.next()
                            group.cancelAll()
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
            }
            poke()
            try? await Task.sleep(for: .milliseconds(Int(backoff * 1000)))
            backoff = min(10, backoff * 2)
        }
    }
}
