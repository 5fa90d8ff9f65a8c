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

/// What becomes of a message after one try (SPEC §4's failure table), decided without I/O.
public enum DeliveryVerdict: Sendable, Equatable {
    case sent
    /// The configuration is broken: mark it `error`, then fall back (or wait).
    case configurationFailed(fallback: Bool)
    case deferred(until: Double)
    case failed
    case expired
}

public enum DeliveryPolicy {
    /// - Parameters:
    ///   - attemptsAfter: tries made so far, this one included.
    ///   - viaPlatform: this try already went through the platform relay (route platform or fallback).
    public static func verdict(
        for result: Result<SendReport, DeliveryError>, attemptsAfter: Int, expiresAt: Double?, now: Double,
        fallback: FallbackPolicy, viaPlatform: Bool, retry: RetryPolicy, random: Double
    ) -> DeliveryVerdict {
        let error: DeliveryError
        switch result {
        case .success: return .sent
        case .failure(let e): error = e
        }
        if error.isConfigurationLevel && !viaPlatform {
            return .configurationFailed(fallback: fallback == .platform)
        }
        if !error.isTemporary && !error.isConfigurationLevel {
            // The recipient or the message is the problem: another server would not help.
            return .failed
        }
        return retryOrGiveUp(attemptsAfter: attemptsAfter, expiresAt: expiresAt, now: now, retry: retry, random: random)
    }

    /// A try that should be repeated later, unless tries or time have run out.
    public static func retryOrGiveUp(
        attemptsAfter: Int, expiresAt: Double?, now: Double, retry: RetryPolicy, random: Double,
        notBefore: Double? = nil
    ) -> DeliveryVerdict {
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

    public static func probeDue(_ config: SMTPConfigRecord, now: Double, cooldown: Double) -> Bool {
        isDown(config) && now >= (config.statusChangedAt ?? 0) + cooldown
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
