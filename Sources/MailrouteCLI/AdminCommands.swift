import ArgumentParser
import MailrouteCore

struct MigrateCommand: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate", abstract: "Create or upgrade the queue database schema (either program also does it on open).")
    @OptionGroup var global: GlobalOptions

    func execute() async throws {
        try await global.context.withService { service in
            let applied = try await service.store.appliedMigrations()
            if global.context.json { return try Output.object(["database": service.store.location, "migrations": applied]) }
            print("\(service.store.location): schema up to date (\(applied.joined(separator: ", ")))")
        }
    }
}

struct KeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Manage the key that encrypts SMTP passwords.", subcommands: [KeyGenerate.self])
}

struct KeyGenerate: CtlCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write a new random key (mode 0600) to [secrets] key_file or --output; never overwrites one.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Where to write the key (default: [secrets] key_file).") var output: String?

    func execute() async throws {
        let path = try output ?? global.context.settings().secrets.keyFile
        try KeyFile.generate(at: path)
        if global.context.json { return try Output.object(["key_file": path]) }
        print("wrote a new key to \(path)")
        print("under systemd, pass it as a credential: LoadCredential=\(KeyFile.credentialName):\(path)")
    }
}
