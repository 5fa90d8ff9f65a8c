import Testing

@testable import MailrouteCore

/// The loop's view of a database that stops answering: said once, retried with backoff.
@Suite struct DatabaseHealthTests {
    @Test func aLostDatabaseIsSaidOnceAndTriedAgainLessAndLessOften() {
        var health = DatabaseHealth()
        #expect(health.mayTry(at: 0))
        #expect(health.failed(at: 100) == .lost)
        #expect(!health.mayTry(at: 100.1))
        #expect(health.mayTry(at: 100.25))
        #expect(health.failed(at: 100.3) == .quiet)
        #expect(!health.mayTry(at: 100.7), "the wait doubled")
        #expect(health.mayTry(at: 100.8))
        var t = 101.0
        for _ in 0..<10 {
            _ = health.failed(at: t)
            t += 1
        }
        let last = t - 1
        #expect(!health.mayTry(at: last + 9.9), "at most ten seconds, and no less by now")
        #expect(health.mayTry(at: last + 10))
        #expect(health.failed(at: 161) == .stillLost, "a reminder a minute after the first line")
        #expect(health.lostSince == 100)
        #expect(health.answered(at: 170) == 70)
        #expect(health.mayTry(at: 170))
        #expect(health.answered(at: 171) == nil, "said once")
        #expect(health.failed(at: 200) == .lost, "a new loss is said again")
    }
}
