/// Log metadata keys, in one place so the journal fields and stderr lines agree.
public enum LogKey {
    public static let id = "mailroute.id"
    public static let tenant = "mailroute.tenant"
    public static let config = "mailroute.config"
    public static let route = "mailroute.route"
    public static let outcome = "mailroute.outcome"
    public static let server = "mailroute.server"
    public static let code = "mailroute.code"
    public static let error = "error"
    /// The HTTP API's request lines.
    public static let method = "mailroute.http.method"
    public static let path = "mailroute.http.path"
    public static let status = "mailroute.http.status"
    public static let listen = "mailroute.api.listen"
}
