import Foundation

/// Runs blocking work (a verify's connect and login, a test message's wait for its reply) on
/// a thread of its own, so it holds neither a thread of Swift's cooperative pool (two on this
/// kind of machine) nor the HTTP server's event loop while a slow server takes its time.
enum BlockingWork {
    static func run<T: Sendable>(_ name: String, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: body())
            }
            thread.name = name
            thread.start()
        }
    }
}
