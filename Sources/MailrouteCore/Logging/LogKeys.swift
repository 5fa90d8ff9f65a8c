/// Log metadata keys, in one place so the journal fields and stderr lines agree.
public enum LogKey {
    public static let id = "mailroute.id"
    public static let tenant = "mailroute.tenant"
    public static let config = "mailroute.config"
    public static let route = "mailroute.route"
    public static let outcome = "mailroute.outcome"
    public static let server = "mailroute.server"
    public static let code = "mailroute.code"
}
