import Foundation

/// A private CA and a server certificate for 127.0.0.1/localhost, made once per test run
/// with the openssl CLI, so no key material lives in the repository.
struct TestCA: Sendable {
    let directory: URL
    var caFile: String { directory.appendingPathComponent("ca.pem").path }
    var certFile: String { directory.appendingPathComponent("server.pem").path }
    var keyFile: String { directory.appendingPathComponent("server.key").path }

    static let shared: TestCA = {
        let dir = Paths.temporaryDirectory("ca")
        let script = """
            set -e
            cd "\(dir.path)"
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/CN=Mailroute Test CA"
            openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 30 -extfile ext.cnf
            """
        let result = try! runProcess(URL(fileURLWithPath: "/bin/sh"), ["-c", script])
        precondition(result.status == 0, "openssl failed: \(result.stderr)")
        return TestCA(directory: dir)
    }()
}
