import MailrouteCLI

await MailrouteDaemonCommand.start()
