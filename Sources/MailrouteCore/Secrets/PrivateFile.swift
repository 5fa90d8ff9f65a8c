import Foundation

/// A file that holds a secret (the password key, a DKIM private key): created with mode 0600
/// and never over an existing one.
public enum PrivateFile {
    public enum Exists: Error { case exists }

    /// Creates the parent directory (0700) if needed, then the file.
    /// `owner`: when running as root, hand the file to this uid/gid (the daemon's user).
    public static func create(at path: String, contents: [UInt8], owner: (uid: uid_t, gid: gid_t)? = nil) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // O_EXCL: two operators running this at once must not both "win", and nothing is overwritten.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else {
            if errno == EEXIST { throw Exists.exists }
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        defer { close(fd) }
        let written = contents.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count) }
        guard written == contents.count else {
            unlink(path)
            throw POSIXError(.EIO)
        }
        if let owner, geteuid() == 0 { _ = fchown(fd, owner.uid, owner.gid) }
        fsync(fd)
    }
}
