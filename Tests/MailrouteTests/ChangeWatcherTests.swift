import Foundation
import Testing

@testable import MailrouteCore

/// The pickup's doorbell: inotify on the database's folder, quiet while the dispatcher drains.
@Suite struct ChangeWatcherTests {
    /// A write to the WAL rings at once; while quiet nothing rings; leaving quiet rings once,
    /// for a commit nobody watched; then writes ring again.
    @Test func theWatchRingsForWritesAndKeepsQuietWhenAsked() async throws {
        // The waits' timers run off the cooperative pool, which other suites block (EngineTests).
        try await withTaskExecutorPreference(EngineExecutor.shared) { try await ringsAndKeepsQuiet() }
    }

    func ringsAndKeepsQuiet() async throws {
        let directory = Paths.temporaryDirectory("wal")
        let database = directory.appendingPathComponent("q.db").path
        let wal = database + "-wal"
        #expect(FileManager.default.createFile(atPath: wal, contents: Data()))
        let doorbell = Doorbell()
        let watcher = try #require(WALWatcher(databasePath: database, doorbell: doorbell))
        defer { watcher.cancel() }
        func write() throws {
            let handle = try #require(FileHandle(forWritingAtPath: wal))
            try handle.seekToEnd()
            try handle.write(contentsOf: Data("frame".utf8))
            try handle.close()
        }
        /// Whether the doorbell rang before `seconds` ran out.
        func rang(within seconds: Double) async -> Bool {
            let start = Date()
            await doorbell.wait(timeout: .milliseconds(Int(seconds * 1000)))
            return Date().timeIntervalSince(start) < seconds * 0.8
        }

        try write()
        #expect(await rang(within: 10), "a WAL write rings")
        watcher.setQuiet(true)
        _ = await rang(within: 0.05)  // a ring from before the quiet, if one is pending
        try write()
        #expect(!(await rang(within: 0.5)), "quiet: our own writes ring nothing")
        watcher.setQuiet(false)
        #expect(await rang(within: 10), "leaving quiet rings once")
        // The re-looks after the first write are long over; a new write rings again.
        try write()
        #expect(await rang(within: 10))
    }
}
