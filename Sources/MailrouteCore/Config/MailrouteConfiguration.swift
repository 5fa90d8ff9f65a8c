import Foundation

/// Everything `mailroute.toml` can say. Every property has a default, so an empty
/// file is a valid configuration; `MailrouteConfiguration+File.swift` lists every key.
public struct MailrouteConfiguration: Sendable, Equatable {
    public var queue = Queue()
    public var delivery = Delivery()
    public var platform = Platform()
    /// Per-category priority and TTL; always holds the built-in categories.
    public var categories: [String: Category] = Category.builtIn
    public var secrets = Secrets()
    public var dkim = DKIM()
    public var log = Log()
    public var api = API()

    public init() {}

    public struct Queue: Sendable, Equatable {
        public enum Backend: String, Sendable, Equatable, CaseIterable {
            /// One host, no server to run: the embedded default.
            case sqlite
            /// Several daemons on several hosts share one queue (SPEC §8).
            case postgres
        }
        public var backend = Backend.sqlite
        /// The SQLite queue database.
        public var path = "/var/lib/mailroute/queue.db"
        /// PostgreSQL: `postgres://user@host:port/database`, without a password.
        public var url = ""
        /// PostgreSQL: the file holding the password (or the systemd credential `mailroute.pgpass`).
        public var passwordFile = ""
        /// PostgreSQL: connections each program opens at most.
        public var maxDatabaseConnections = 8
        /// Upper bound between two looks at the queue when nothing signals a change. New rows
        /// are noticed through SQLite's data_version within about 50 ms regardless.
        public var pollIntervalSeconds = 1.0
        /// How long a claimed row stays `sending` before another daemon may take it back.
        public var leaseSeconds = 300.0
        /// Sent messages (row, body, attachments, attempts) are purged after this many days; 0 keeps them.
        public var retentionDays = 30
        public init() {}
    }

    public struct Delivery: Sendable, Equatable {
        /// Name sent in EHLO; empty means this host's name.
        public var heloName = ""
        /// TCP connect plus the greeting, EHLO, STARTTLS and AUTH.
        public var connectTimeoutSeconds = 15.0
        /// Longest wait for any one server reply, or for progress while sending data.
        public var commandTimeoutSeconds = 60.0
        /// Pool size of a configuration that sets none.
        public var defaultMaxConnections = 4
        /// A pooled connection unused for this long is closed.
        public var idleTimeoutSeconds = 60.0
        /// A pooled connection is closed after this many messages.
        public var maxMessagesPerConnection = 100
        public var retryInitialSeconds = 30.0
        public var retryMaxSeconds = 3600.0
        public var maxAttempts = 10
        /// After a configuration-level failure, how long before a probe may try it again.
        public var cooldownSeconds = 300.0
        /// Consecutive connect or greeting timeouts (with no success between) that trip a
        /// configuration; one alone is as likely a busy host as a dead server (SPEC §4).
        public var breakerTimeouts = 3
        /// SPEC §4 "Nothing waits forever": an unsent message ends `expired` this long after it
        /// was due, whatever it waits for (Postfix's `maximal_queue_lifetime`, five days).
        public var maxQueueLifetimeSeconds = 432_000.0
        /// Networks a tenant's server may be in although they are loopback, private,
        /// link-local, unspecified or multicast (SPEC §4 "Tenant-supplied hosts"); none by
        /// default. The platform relay is exempt.
        public var allowedNetworks: [IPNetwork] = []
        public init() {}

        /// Where a tenant's configuration may connect.
        public var networkPolicy: NetworkPolicy { NetworkPolicy(allowed: allowedNetworks) }

        public var effectiveHeloName: String {
            if !heloName.isEmpty { return heloName }
            return ProcessInfo.processInfo.hostName
        }
    }

    /// The platform's own relay: the last routing step and the fallback target.
    public struct Platform: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 25
        public var security = SMTPSecurity.none
        public var username = ""
        /// A file holding the relay's password; never the password itself.
        public var passwordFile = ""
        public var fromAddress = "mailroute@localhost"
        public var fromName = "Mailroute"
        public var caFile = ""
        public init() {}
    }

    public struct Category: Sendable, Equatable {
        public var priority: Int
        /// Unsent messages of this category expire after this many seconds; nil = never.
        public var ttlSeconds: Double?
        public init(priority: Int, ttlSeconds: Double? = nil) {
            self.priority = priority
            self.ttlSeconds = ttlSeconds
        }

        public static let other = Category(priority: 3)
        public static let builtIn: [String: Category] = [
            "password_reset": Category(priority: 1, ttlSeconds: 3600),
            "invite": Category(priority: 2),
            "call_notification": Category(priority: 2),
            "report": Category(priority: 4),
        ]
    }

    public struct Secrets: Sendable, Equatable {
        /// Used when the systemd credential `mailroute.key` is absent.
        public var keyFile = "/etc/mailroute/mailroute.key"
        public init() {}
    }

    public struct DKIM: Sendable, Equatable {
        /// Holds `DOMAIN.SELECTOR.pem` private keys.
        public var keysDirectory = "/etc/mailroute/dkim"
        public init() {}
    }

    /// The HTTP API and metrics (SPEC §9).
    public struct API: Sendable, Equatable {
        public enum Listen: Sendable, Equatable, CustomStringConvertible {
            case off
            /// Port 0 takes a free one; the "api listening" log line says which.
            case tcp(host: String, port: Int)
            case unix(path: String)

            public var description: String {
                switch self {
                case .off: "off"
                case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
                case .unix(let path): "unix:\(path)"
                }
            }
        }
        /// `""` (off), `"127.0.0.1:8025"`, `"[::1]:8025"` or `"unix:/run/mailroute/api.sock"`.
        public var listen = Listen.off
        /// Bearer tokens, one per line; read when the systemd credential `mailroute.api-token` is absent.
        public var tokenFile = ""
        /// Whether `GET /metrics` needs a token too.
        public var metricsAuth = false
        /// Larger request bodies get 413. Attachments arrive base64, a third larger than the files.
        public var maxBodyBytes = 16 * 1024 * 1024
        public init() {}
    }

    public struct Log: Sendable, Equatable {
        public enum Level: String, Sendable, CaseIterable {
            case trace, debug, info, notice, warning, error, critical
        }
        public enum Target: String, Sendable, CaseIterable {
            case auto, journal, stderr
        }
        public var level = Level.info
        public var target = Target.auto
        public init() {}
    }

    public func category(_ name: String) -> Category {
        categories[name] ?? .other
    }
}
