import MailrouteCLI

await MailrouteCtl.main(arguments: Array(CommandLine.arguments.dropFirst()))
