import Foundation

/// Both programs hold clear passwords in memory for a moment (a login, `--password-stdin`,
/// the platform relay's password file): a core file would keep them on disk for anyone who can
/// read the crash directory. systemd-coredump honours the limit too ("Resource limits disable
/// core dumping"). A crash still leaves its backtrace on stderr, the journal under systemd.
/// glibc makes setrlimit the prlimit64 system call, which the unit's `SystemCallFilter` allows
/// (`~@resources` denies `setrlimit` itself; `SecretsAndPermissionsTests` checks it stays so).
public enum CoreDumps {
    public static func forbid() {
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &none)
    }
}
