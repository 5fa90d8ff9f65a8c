/// An operator-facing failure: one line that says what is wrong. The CLI prints it and exits non-zero.
public enum MailrouteError: Error, CustomStringConvertible, Equatable {
    /// A value given on the command line or in a row, naming the field.
    case invalid(field: String, reason: String)
    case notFound(String)
    /// The thing exists already, or is not in a state for this (a message already sent).
    case conflict(String)
    /// A rule of SPEC §2 forbids the change (deleting or disabling the default).
    case rule(String)
    /// The queue's schema was migrated by a newer mailroute: this one refuses it rather than
    /// write rows that newer code reads differently (`location`: a path or a URL).
    case schemaNewer(location: String, database: String, binary: String)
    /// This user may not open a file the programs need (`why`: owner, group, mode and the fix).
    case permission(path: String, why: String)

    public var description: String {
        switch self {
        case .invalid(let field, let reason): "\(field): \(reason)"
        case .notFound(let what): "\(what) not found"
        case .conflict(let why), .rule(let why): why
        case .schemaNewer(let location, let database, let binary):
            "the queue database \(location) is at schema migration \(database), newer than this mailroute, whose newest "
                + "migration is \(binary): upgrade mailroute (every daemon and mailroutectl on every host) to the version "
                + "that migrated it"
        case .permission(let path, let why): "cannot open \(path): \(why)"
        }
    }
}
