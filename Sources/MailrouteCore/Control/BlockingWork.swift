import Foundation

/// Runs blocking work (a verify's connect and login, a test message's wait for its reply, a
/// host name's lookup) on a thread of its own, so it holds neither a thread of Swift's
/// cooperative pool (two on this kind of machine) nor the HTTP server's event loop while a
/// slow server takes its time. At most `limit` run at once: a settings page retrying in a
/// loop gets `Busy` (503) rather than piling up threads and outbound connections.
public enum BlockingWork {
    public static let limit = 32

    public struct Busy: Error, CustomStringConvertible {
        public var description: String { "\(BlockingWork.limit) verifications and tests are already running; try again shortly" }
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var running = 0

    static func run<T: Sendable>(_ name: String, _ body: @escaping @Sendable () -> T) async throws -> T {
        try lock.withLock {
            guard running < limit else { throw Busy() }
            running += 1
        }
        return await withCheckedContinuation { continuation in
            let thread = Thread {
                let result = body()
                lock.withLock { running -= 1 }
                continuation.resume(returning: result)
            }
            thread.name = name
            thread.start()
        }
    }
}
