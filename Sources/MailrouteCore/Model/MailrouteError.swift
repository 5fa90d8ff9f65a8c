/// An operator-facing failure: one line that says what is wrong. The CLI prints it and exits non-zero.
public enum MailrouteError: Error, CustomStringConvertible, Equatable {
    /// A value given on the command line or in a row, naming the field.
    case invalid(field: String, reason: String)
    case notFound(String)
    /// A rule of SPEC §2 forbids the change.
    case conflict(String)
    /// This user may not open a file the programs need (`why`: owner, group, mode and the fix).
    case permission(path: String, why: String)

    public var description: String {
        switch self {
        case .invalid(let field, let reason): "\(field): \(reason)"
        case .notFound(let what): "\(what) not found"
        case .conflict(let why): why
        case .permission(let path, let why): "cannot open \(path): \(why)"
        }
    }
}
