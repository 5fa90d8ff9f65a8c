import Foundation

/// A tmpfs of a few megabytes that a test mounts, fills and frees, for what a full disk does to
/// the queue. Needs root (CI runs the tests as root); unmounted when dropped, lazily, so that a
/// process still holding a file in it cannot keep it mounted.
final class SmallFilesystem: @unchecked Sendable {
    let path: String
    private var filler: String { path + "/filler" }

    init(megabytes: Int) throws {
        path = "/tmp/mailroute-test-fs-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let result = try PostgresTestServer.spawnAndWait(["-c", "mount -t tmpfs -o size=\(megabytes)m,mode=0755 tmpfs '\(path)'"])
        guard result.status == 0 else {
            rmdir(path)
            throw Failure(description: "cannot mount a tmpfs at \(path): \(result.output)")
        }
    }

    deinit {
        _ = try? PostgresTestServer.spawnAndWait(["-c", "umount -l '\(path)'"])
        rmdir(path)
    }

    /// Whether this machine lets the tests mount one: root, and mount(2) allowed. Asked once.
    static let unavailable: String? = {
        guard geteuid() == 0 else { return "the disk-full test mounts a tmpfs, which needs root (CI runs as root)" }
        do {
            _ = try SmallFilesystem(megabytes: 1)
            return nil
        } catch {
            return "the disk-full test cannot mount a tmpfs here: \(error)"
        }
    }()

    /// Writes a file until the filesystem has no block left.
    func fill() {
        let fd = open(filler, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        defer { close(fd) }
        for size in [1 << 20, 4096, 512, 1] {
            let chunk = [UInt8](repeating: 0x55, count: size)
            while write(fd, chunk, size) == size {}
        }
    }

    func free() {
        unlink(filler)
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }
}
