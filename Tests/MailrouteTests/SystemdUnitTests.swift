import Foundation
import Testing

/// The unit files, checked by systemd's own tools (offline: no systemd as PID 1 needed).
@Suite struct SystemdUnitTests {
    static let analyze = URL(fileURLWithPath: "/usr/bin/systemd-analyze")

    /// The unit as installed, but pointing at the freshly built binary.
    func unit() throws -> URL {
        let dir = Paths.temporaryDirectory("unit")
        let text = try String(contentsOf: Paths.packageRoot.appendingPathComponent("systemd/mailroute.service"), encoding: .utf8)
            .replacingOccurrences(of: "/usr/bin/mailrouted", with: Paths.mailrouted.path)
        let url = dir.appendingPathComponent("mailroute.service")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url
    }

    @Test func theUnitVerifies() throws {
        let result = try runProcess(Self.analyze, ["verify", try unit().path])
        #expect(result.status == 0, "\(result.output)")
        #expect(!result.output.contains("mailroute.service:"), "\(result.output)")
    }

    @Test func theUnitIsHardened() throws {
        // The threshold is on a 0-100 scale: 20 = an exposure of 2.0, "OK".
        let result = try runProcess(Self.analyze, ["security", "--offline=true", "--threshold=20", try unit().path])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("Overall exposure level for mailroute.service: 1."))
    }

    @Test func installPutsEverythingWhereAPackageWould() throws {
        let root = Paths.temporaryDirectory("install")
        // The Makefile's install rules, dry run (no release build): the sysusers.d file goes in,
        // and the owners and modes come from the installed sysusers.d and tmpfiles.d files.
        let script = """
            set -e
            cd "\(Paths.packageRoot.path)"
            out=$(make -n install PREFIX=/usr DESTDIR="\(root.path)")
            echo "$out" | grep -E 'sysusers.d/mailroute.conf' >/dev/null
            echo "$out" | grep -E 'mailroute_setup /usr/lib/sysusers.d/mailroute.conf' >/dev/null
            """
        #expect(try runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", script]).status == 0)
        let sysusers = try String(contentsOf: Paths.packageRoot.appendingPathComponent("systemd/mailroute.sysusers"), encoding: .utf8)
        #expect(sysusers.contains("u mailroute"))
        let tmpfiles = try String(contentsOf: Paths.packageRoot.appendingPathComponent("systemd/mailroute.tmpfiles"), encoding: .utf8)
        #expect(tmpfiles.contains("d /var/lib/mailroute 0770 mailroute mailroute"))
        // The daemon (group mailroute) reads its config; others do not.
        #expect(tmpfiles.contains("z /etc/mailroute/mailroute.toml 0640 root mailroute"))
    }
}
