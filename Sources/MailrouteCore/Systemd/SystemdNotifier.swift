import CSystemd

/// sd_notify(3): tells systemd (when `$NOTIFY_SOCKET` is set) what the daemon is doing.
/// Without systemd every call is a no-op.
public struct SystemdNotifier: Sendable {
    public init() {}

    public func ready(status: String) { send("READY=1\nSTATUS=\(status)") }
    public func status(_ status: String) { send("STATUS=\(status)") }
    public func stopping() { send("STOPPING=1\nSTATUS=stopping") }
    public func watchdog() { send("WATCHDOG=1") }
    public func reloading() { send("RELOADING=1\nSTATUS=reloading") }

    /// Half of `WatchdogSec` when systemd expects pings from this process, else nil.
    public func watchdogInterval() -> Double? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return Double(usec) / 2_000_000
    }

    private func send(_ state: String) {
        _ = sd_notify(0, state)
    }
}
