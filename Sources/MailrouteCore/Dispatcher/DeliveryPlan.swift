/// How one claimed message leaves: decided once, from the route the claim resolved against
/// the routing as committed, and carried through the try. A pure function of its inputs.
public struct DeliveryPlan: Sendable, Equatable {
    public enum Target: Sendable, Equatable {
        case platform
        case config(SMTPConfigRecord)
    }

    public var target: Target
    public var route: RouteStep
    /// From, display name and Reply-To as the message leaves through `target`.
    public var identity: SenderIdentity
    /// Through the relay when the configuration fails or is down and its fallback is
    /// `platform`: the brand's name, the platform's address, replies to the brand (SPEC §4).
    public var fallbackIdentity: SenderIdentity?
    /// A `mail_from` the configuration does not authorize.
    public var unauthorizedSender: String?
    /// `block_unauthorized`: the message fails `sender_unauthorized` without a try.
    public var refused: Bool

    public var config: SMTPConfigRecord? {
        if case .config(let config) = target { return config }
        return nil
    }

    /// Which keys sign: none when the tenant's own server signs. Mail through the relay is
    /// the platform's and always signed for its From domain.
    public var dkim: DKIMMode { config?.dkim ?? .platform }

    public static func make(
        _ message: MessageRecord, resolution: RouteResolution, platform: MailrouteConfiguration.Platform
    ) -> DeliveryPlan {
        guard let config = resolution.config else {
            let identity = SenderIdentity(
                address: message.mailFrom ?? platform.fromAddress,
                name: message.fromName ?? nonEmpty(platform.fromName), replyTo: message.replyTo)
            return DeliveryPlan(target: .platform, route: resolution.step, identity: identity, fallbackIdentity: nil,
                unauthorizedSender: nil, refused: false)
        }
        var identity = SenderIdentity(
            address: config.fromAddress, name: message.fromName ?? config.fromName, replyTo: message.replyTo ?? config.replyTo)
        var unauthorized: String?
        if let override = message.mailFrom {
            if SenderAuthorization.isAuthorized(override, domains: config.authorizedDomainList, senders: config.authorizedSenderList) {
                identity.address = override
            } else {
                unauthorized = override
                if !config.blockUnauthorized { identity.address = override }
            }
        }
        let fallback = config.fallback == .platform
            ? SenderIdentity(
                address: platform.fromAddress, name: identity.name ?? nonEmpty(platform.fromName),
                replyTo: message.replyTo ?? config.replyTo ?? identity.address)
            : nil
        return DeliveryPlan(target: .config(config), route: resolution.step, identity: identity, fallbackIdentity: fallback,
            unauthorizedSender: unauthorized, refused: unauthorized != nil && config.blockUnauthorized)
    }
}

func nonEmpty(_ s: String) -> String? { s.isEmpty ? nil : s }
