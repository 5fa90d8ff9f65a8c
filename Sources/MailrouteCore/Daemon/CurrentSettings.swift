import Foundation

/// The daemon's settings as the last good reload left them, for the parts that read them per
/// request (the HTTP API) rather than being handed them (the dispatcher's `reload`): a SIGHUP
/// that tightens `[delivery] allowed_networks` reaches the API's add, verify and test too.
public final class CurrentSettings: @unchecked Sendable {
    private let lock = NSLock()
    private var settings: MailrouteConfiguration

    public init(_ settings: MailrouteConfiguration) {
        self.settings = settings
    }

    public var value: MailrouteConfiguration { lock.withLock { settings } }

    func replace(with next: MailrouteConfiguration) { lock.withLock { settings = next } }
}
