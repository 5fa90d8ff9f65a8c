import Logging
import ServiceLifecycle
import UnixSignals

/// SIGHUP: re-read the config file. An invalid file is logged and the running config kept.
struct ReloadService: Service {
    let configPath: String
    let dispatcher: Dispatcher
    let notifier: SystemdNotifier
    let logger: Logger
    let current: MailrouteConfiguration
    /// What the API reads per request.
    let live: CurrentSettings

    func run() async throws {
        var running = current
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            notifier.reloading()
            do {
                let next = try MailrouteConfiguration(contentsOfFile: configPath)
                try await dispatcher.reload(next)
                live.replace(with: next)
                let changed = Self.changedSections(running, next)
                if next.queue.path != running.queue.path {
                    logger.warning("queue.path changes only on restart", metadata: ["path": "\(running.queue.path)"])
                }
                if next.api != running.api {
                    logger.warning("[api] listen, tokens and limits change only on restart", metadata: ["listen": "\(running.api.listen)"])
                }
                running = next
                logger.notice("reloaded", metadata: ["config_file": "\(configPath)", "changed": "\(changed.isEmpty ? "nothing" : changed.joined(separator: ","))"])
            } catch {
                logger.error("reload failed; keeping the running configuration", metadata: ["config_file": "\(configPath)", "error": "\(error)"])
            }
            notifier.ready(status: "reloaded")
        }
    }

    static func changedSections(_ a: MailrouteConfiguration, _ b: MailrouteConfiguration) -> [String] {
        var changed: [String] = []
        if a.queue != b.queue { changed.append("queue") }
        if a.delivery != b.delivery { changed.append("delivery") }
        if a.platform != b.platform { changed.append("platform") }
        if a.categories != b.categories { changed.append("categories") }
        if a.secrets != b.secrets { changed.append("secrets") }
        if a.dkim != b.dkim { changed.append("dkim") }
        if a.log != b.log { changed.append("log") }
        if a.api != b.api { changed.append("api") }
        return changed
    }
}
