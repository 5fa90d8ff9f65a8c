/// Whether the queue's database answers, and when to ask it again after it did not: a state
/// machine over the times it is given. While the database is away every turn of the loop would
/// wait out a timeout; instead the loop tries again after a backoff that doubles from a quarter
/// of a second to ten, and keeps pinging the watchdog meanwhile.
struct DatabaseHealth: Sendable, Equatable {
    private(set) var lostSince: Double?
    /// What the last failure was, while the database is away.
    private(set) var fault: DatabaseFault?
    private var failures = 0
    private var retryAt = -Double.infinity
    private var lastLogged = -Double.infinity

    static let firstBackoff = 0.25
    static let maxBackoff = 10.0
    /// While it stays away, one log line this often.
    static let logInterval = 60.0

    enum Failure: Equatable {
        /// The first failure after the database answered, or a failure of another kind than
        /// the last (a disk that fills while the server was away): say so (log, STATUS).
        case lost
        /// Still away, and time for a reminder in the log.
        case stillLost
        /// Still away; nothing to say.
        case quiet
    }

    func mayTry(at t: Double) -> Bool { t >= retryAt }

    mutating func failed(at t: Double, fault: DatabaseFault = .unreachable) -> Failure {
        failures += 1
        retryAt = t + min(Self.maxBackoff, Self.firstBackoff * Double(1 << min(failures - 1, 10)))
        let was = self.fault
        self.fault = fault
        if lostSince == nil || was != fault {
            lostSince = lostSince ?? t
            lastLogged = t
            return .lost
        }
        if t - lastLogged >= Self.logInterval {
            lastLogged = t
            return .stillLost
        }
        return .quiet
    }

    /// An answer: how long it had been away, if it had.
    mutating func answered(at t: Double) -> Double? {
        defer { self = DatabaseHealth() }
        return lostSince.map { t - $0 }
    }
}
