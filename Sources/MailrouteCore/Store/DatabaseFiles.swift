import Foundation

/// The SQLite queue's files as the operating system sees them: the database and the `-wal`
/// and `-shm` files SQLite keeps beside it.
///
/// Modes. The database is made 0660 (`QueueStore.createDatabaseFile`): the daemon and the
/// enqueuers of its group read and write it, nobody else reads it. SQLite gives `-wal` and
/// `-shm` the database's own mode whatever the umask, so the three agree. A file found
/// readable by others (made by an enqueuer's `sqlite3` under umask 022, or by an older
/// mailroute) loses those bits when either program opens it: queued bodies hold password
/// resets and sign-in codes. One that this user cannot change is refused, naming the fix.
enum DatabaseFiles {
    static func all(_ path: String) -> [String] { [path, path + "-wal", path + "-shm"] }

    /// Before SQLite opens the files: a user who may not gets a sentence naming the file, its
    /// owner, group and mode, rather than SQLite's "unable to open database file".
    static func checkAccess(_ path: String) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        guard faccessat(AT_FDCWD, directory, X_OK, AT_EACCESS) == 0 else {
            throw MailrouteError.permission(path: path, why: denied(directory, need: "enter the directory"))
        }
        var missing = false
        for file in all(path) where faccessat(AT_FDCWD, file, R_OK | W_OK, AT_EACCESS) != 0 {
            // Gone is not refused: -wal and -shm come and go as other processes' last
            // connection closes (1,000 `config add`s in a row met one between two calls).
            if errno == ENOENT {
                missing = true
                continue
            }
            throw MailrouteError.permission(path: file, why: denied(file, need: "read and write it"))
        }
        // The first to open the database (after the last closed it) makes -wal and -shm.
        if missing && faccessat(AT_FDCWD, directory, W_OK | X_OK, AT_EACCESS) != 0 {
            throw MailrouteError.permission(path: path, why: denied(directory, need: "create files in the directory"))
        }
    }

    /// Takes the bits of "others" off each file that has them.
    static func closeToOthers(_ path: String) throws {
        for file in all(path) {
            var info = stat()
            guard stat(file, &info) == 0, info.st_mode & 0o007 != 0 else { continue }
            if chmod(file, info.st_mode & 0o770) != 0 && errno != ENOENT {
                throw MailrouteError.permission(
                    path: file,
                    why: "it is open to every user (\(describe(info))) and \(user()) cannot change that: "
                        + "run `chmod o-rwx \(file)` as its owner")
            }
        }
    }

    /// "permission denied for user nobody: …": who tried, what the file is, and the fix.
    static func denied(_ file: String, need: String) -> String {
        var info = stat()
        guard stat(file, &info) == 0 else {
            let reason = String(cString: strerror(errno))  // before user() can change errno
            return "\(user()) cannot \(need): \(reason)"
        }
        let group = name(group: info.st_gid)
        return "permission denied: \(user()) cannot \(need) (\(file) is \(describe(info))); run this as root or as "
            + "the daemon's user, or add this user to group \(group)"
    }

    private static func describe(_ info: stat) -> String {
        let owner = getpwuid(info.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(info.st_uid)"
        return "\(owner):\(name(group: info.st_gid)) mode \(String(info.st_mode & 0o777, radix: 8))"
    }

    private static func name(group gid: gid_t) -> String {
        getgrgid(gid).map { String(cString: $0.pointee.gr_name) } ?? "gid \(gid)"
    }

    private static func user() -> String {
        "user " + (getpwuid(geteuid()).map { String(cString: $0.pointee.pw_name) } ?? "uid \(geteuid())")
    }
}
