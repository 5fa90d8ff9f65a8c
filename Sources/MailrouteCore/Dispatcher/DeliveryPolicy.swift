/// Exponential backoff with "equal jitter": half the step is fixed, half random, so a burst
/// of failures spreads out instead of retrying in lockstep.
public struct RetryPolicy: Sendable, Equatable {
    public var initialSeconds: Double
    public var maxSeconds: Double
    public var maxAttempts: Int

    public init(initialSeconds: Double, maxSeconds: Double, maxAttempts: Int) {
        self.initialSeconds = initialSeconds
        self.maxSeconds = maxSeconds
        self.maxAttempts = maxAttempts
    }

    public init(_ delivery: MailrouteConfiguration.Delivery) {
        self.init(
            initialSeconds: delivery.retryInitialSeconds, maxSeconds: delivery.retryMaxSeconds,
            maxAttempts: delivery.maxAttempts)
    }

    /// Delay before the next try after `attempts` tries; `random` is in 0..<1.
    public func delay(afterAttempts attempts: Int, random: Double) -> Double {
        let exponent = Double(max(0, attempts - 1))
        let step = min(maxSeconds, initialSeconds * pow2(exponent))
        return step / 2 + step / 2 * random
    }

    private func pow2(_ x: Double) -> Double {
        x >= 62 ? .greatestFiniteMagnitude : Double(UInt64(1) << UInt64(x))
    }
}

/// What becomes of a message after one try: SPEC §4's failure table and the breaker, in
/// one place, as maddy's `tryDelivery` decides retry, fail or bounce once per try. The
/// attempt row is written with `attemptOutcome` from the start.
public enum Decision: Sendable, Equatable {
    case sent
    /// The configuration is broken: it goes to `error` and the message leaves through the relay now.
    case tripAndFallBack
    /// The configuration is broken and its fallback is `none`: it goes to `error`; the message
    /// waits for its first probe.
    case tripAndWait(until: Double)
    /// The configuration is broken and its fallback is `none`, and the message's tries or time
    /// have run out: the configuration still goes to `error`.
    case tripAndFail
    case tripAndExpire
    case deferred(until: Double)
    case failed
    case expired
    /// Nothing was tried (the pool closed first): the row goes back as it was.
    case notStarted

    public var attemptOutcome: AttemptOutcome {
        switch self {
        case .sent: .sent
        case .tripAndFallBack: .fallback
        case .failed, .tripAndFail: .failed
        case .tripAndWait, .deferred, .expired, .tripAndExpire, .notStarted: .deferred
        }
    }

    public var trips: Bool {
        switch self {
        case .tripAndFallBack, .tripAndWait, .tripAndFail, .tripAndExpire: true
        default: false
        }
    }
}

/// What the decision weighs besides the result.
public struct TryContext: Sendable {
    /// Tries made so far, this one included.
    public var attemptsAfter: Int
    public var expiresAt: Double?
    public var now: Double
    public var retry: RetryPolicy
    /// In 0..<1, for the backoff's jitter.
    public var random: Double
    /// nil: the try went through the platform relay (route `platform` or `fallback`), which
    /// has no fallback of its own and never trips.
    public var tenant: Tenant?

    public struct Tenant: Sendable {
        public var fallback: FallbackPolicy
        /// Connect or greeting timeouts in a row before this try, with no success between.
        public var consecutiveTimeouts: Int
        public var breakerTimeouts: Int
        /// When a configuration tripped now would first be probed.
        public var firstProbeAt: Double

        public init(fallback: FallbackPolicy, consecutiveTimeouts: Int, breakerTimeouts: Int, firstProbeAt: Double) {
            self.fallback = fallback
            self.consecutiveTimeouts = consecutiveTimeouts
            self.breakerTimeouts = breakerTimeouts
            self.firstProbeAt = firstProbeAt
        }
    }

    public init(attemptsAfter: Int, expiresAt: Double?, now: Double, retry: RetryPolicy, random: Double, tenant: Tenant?) {
        self.attemptsAfter = attemptsAfter
        self.expiresAt = expiresAt
        self.now = now
        self.retry = retry
        self.random = random
        self.tenant = tenant
    }
}

public enum DeliveryPolicy {
    public static func decide(_ completion: PoolCompletion, _ context: TryContext) -> Decision {
        let error: DeliveryError
        switch completion {
        case .sent, .verified: return .sent
        case .notStarted: return .notStarted
        case .failed(let e): error = e
        }
        if let tenant = context.tenant {
            // A server's own answer trips at once; silence only after breaker_timeouts in a row,
            // since it may be this host that is slow, not the server.
            let trips = error.isConfigurationLevel
                || (error.kind == .connectTimeout && tenant.consecutiveTimeouts + 1 >= tenant.breakerTimeouts)
            if trips {
                if tenant.fallback == .platform { return .tripAndFallBack }
                switch retryOrGiveUp(context, notBefore: tenant.firstProbeAt) {
                case .deferred(let until): return .tripAndWait(until: until)
                case .failed: return .tripAndFail
                default: return .tripAndExpire
                }
            }
        }
        if !error.isTemporary && !error.isConfigurationLevel {
            // The recipient or the message is the problem: another server would not help.
            return .failed
        }
        return retryOrGiveUp(context)
    }

    static func retryOrGiveUp(_ context: TryContext, notBefore: Double? = nil) -> Decision {
        retryOrGiveUp(
            attemptsAfter: context.attemptsAfter, expiresAt: context.expiresAt, now: context.now, retry: context.retry,
            random: context.random, notBefore: notBefore)
    }

    /// A try that should be repeated later, unless tries or time have run out.
    public static func retryOrGiveUp(
        attemptsAfter: Int, expiresAt: Double?, now: Double, retry: RetryPolicy, random: Double,
        notBefore: Double? = nil
    ) -> Decision {
        if attemptsAfter >= retry.maxAttempts { return .failed }
        var next = now + retry.delay(afterAttempts: attemptsAfter, random: random)
        if let notBefore { next = max(next, notBefore) }
        if let expiresAt, next >= expiresAt { return .expired }
        return .deferred(until: next)
    }

    /// A configuration that failed at configuration level is down until its cool-down has
    /// passed and a probe succeeded; until then its mail goes to fallback or waits.
    public static func isDown(_ config: SMTPConfigRecord) -> Bool {
        config.status == .error && config.errorKind.map(isConfigurationLevel) == true
    }

    static func isConfigurationLevel(_ kind: ConfigErrorKind) -> Bool {
        switch kind {
        case .connectionFailed, .authFailed, .tlsFailed, .fromRejected: true
        case .recipientRejected, .unknown: false
        }
    }
}

/// SPEC §2: a `mail_from` override must be in the configuration's authorized senders or
/// domains; both lists empty authorizes everyone.
/// SPEC §2: a `mail_from` override is authorized by an exact domain (`brand.com` does not
/// cover `mail.brand.com`; list both to allow both) or an exact address, case-insensitively;
/// both lists empty authorizes everyone. Internationalized domains compare in punycode, the
/// form the lists are stored in.
public enum SenderAuthorization {
    public static func isAuthorized(_ address: String, domains: [String], senders: [String]) -> Bool {
        if domains.isEmpty && senders.isEmpty { return true }
        let normalized = normalize(address)
        if senders.contains(where: { normalize($0) == normalized }) { return true }
        guard let at = normalized.lastIndex(of: "@") else { return false }
        let domain = normalized[normalized.index(after: at)...]
        return domains.contains { normalizeDomain(Substring($0)) == domain }
    }

    static func normalize(_ address: String) -> String {
        guard let at = address.lastIndex(of: "@") else { return address.lowercased() }
        return address[..<at].lowercased() + "@" + normalizeDomain(address[address.index(after: at)...])
    }

    static func normalizeDomain(_ domain: Substring) -> String {
        ((try? IDNA.toASCII(String(domain))) ?? String(domain)).lowercased()
    }
}
