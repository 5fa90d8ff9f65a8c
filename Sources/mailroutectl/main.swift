import MailrouteCLI

MailrouteCtl.main(arguments: Array(CommandLine.arguments.dropFirst()))
