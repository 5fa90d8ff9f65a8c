import Foundation
import Logging
import Testing

@testable import MailrouteCore

@Suite struct LogHandlerTests {
    let attempt: Logger.Metadata = [
        LogKey.id: "42", LogKey.tenant: "acme", LogKey.config: "acme/main", LogKey.route: "fallback",
        LogKey.outcome: "sent", LogKey.code: "250", "response": "250 2.0.0 Ok: queued as 4XYZ",
    ]

    @Test func stderrLinesAreKeyValueWithQuotingWhereNeeded() {
        let line = MailrouteLogHandler.line(message: "delivery", metadata: attempt)
        #expect(line == #"delivery id=42 tenant=acme config=acme/main route=fallback outcome=sent code=250 response="250 2.0.0 Ok: queued as 4XYZ""#)
        #expect(MailrouteLogHandler.quote("a\nb \"c\"") == #""a\nb \"c\"""#)
        #expect(MailrouteLogHandler.quote("") == #""""#)
        #expect(MailrouteLogHandler.quote("plain") == "plain")
        #expect(MailrouteLogHandler.quote("café") == "café")
        #expect(MailrouteLogHandler.quote("a\u{2028}b") == #""a\u{2028}b""#, "no Unicode line break reaches the log")
        #expect(MailrouteLogHandler.quote("a=b\r") == #""a=b\r""#)
    }

    @Test func journalEntriesCarryTheStructuredFields() {
        let fields = MailrouteLogHandler.journalFields(level: .warning, message: "delivery", metadata: attempt, identifier: "mailrouted")
        #expect(fields.contains("PRIORITY=4"))
        #expect(fields.contains("SYSLOG_IDENTIFIER=mailrouted"))
        #expect(fields.contains("MAILROUTE_ID=42"))
        #expect(fields.contains("MAILROUTE_TENANT=acme"))
        #expect(fields.contains("MAILROUTE_CONFIG=acme/main"))
        #expect(fields.contains("MAILROUTE_ROUTE=fallback"))
        #expect(fields.contains("MAILROUTE_OUTCOME=sent"))
        #expect(fields.contains("MAILROUTE_CODE=250"))
        #expect(fields.contains("MAILROUTE_RESPONSE=250 2.0.0 Ok: queued as 4XYZ"))
        #expect(fields.first?.hasPrefix("MESSAGE=delivery ") == true)
    }

    @Test func valuesWithNewlinesStayOneFieldAndNamesAreLegal() {
        let fields = MailrouteLogHandler.journalFields(level: .error, message: "x", metadata: ["response": "421 line one\n421 line two"], identifier: "m")
        #expect(fields.contains("MAILROUTE_RESPONSE=421 line one\n421 line two"))
        #expect(MailrouteLogHandler.journalFieldName("mailroute.id") == "MAILROUTE_ID")
        #expect(MailrouteLogHandler.journalFieldName("_private-key.x") == "MAILROUTE_PRIVATE_KEY_X")
        #expect(MailrouteLogHandler.journalFieldName("9lives") == "MAILROUTE_LIVES")
    }

    @Test func prioritiesFollowSyslog() {
        #expect(MailrouteLogHandler.syslogPriority(.critical) == 2)
        #expect(MailrouteLogHandler.syslogPriority(.error) == 3)
        #expect(MailrouteLogHandler.syslogPriority(.info) == 6)
        #expect(MailrouteLogHandler.syslogPriority(.debug) == 7)
    }

    @Test func theJournalIsChosenOnlyWhenStderrIsConnectedToIt() throws {
        #expect(MailrouteLogHandler.sink(for: .auto, environment: [:]).sink == .stderr(priorityPrefix: false))
        #expect(MailrouteLogHandler.sink(for: .auto, environment: ["JOURNAL_STREAM": "1:2"]).sink == .stderr(priorityPrefix: false))
        #expect(MailrouteLogHandler.sink(for: .stderr, environment: [:]).sink == .stderr(priorityPrefix: false))
        let journald = try NotifyListener()  // any datagram socket stands in for journald's
        let chosen = MailrouteLogHandler.sink(for: .journal, environment: [:], journalSocket: journald.path)
        #expect(chosen.sink == .journal)
        #expect(chosen.warning == nil)
    }

    /// Without journald, `target = "journal"` would drop every line: it says so and uses stderr.
    @Test func aMissingJournalIsReportedAndStderrUsed() {
        let (sink, warning) = MailrouteLogHandler.sink(for: .journal, environment: [:], journalSocket: "/nonexistent/journal/socket")
        #expect(sink == .stderr(priorityPrefix: false))
        #expect(warning?.contains("no journal is running") == true)
        #expect(warning?.contains("/nonexistent/journal/socket") == true)
    }

    @Test func stderrLinesStartWithAnRFC3339TimeAndTheLevel() {
        let time = Date(timeIntervalSince1970: 1_764_578_459.1234)
        let line = MailrouteLogHandler.stderrLine(level: .warning, message: "delivery", metadata: [LogKey.id: "42"], priorityPrefix: false, at: time)
        #expect(line == "2025-12-01T08:40:59.123Z warning delivery id=42")
        let journald = MailrouteLogHandler.stderrLine(level: .warning, message: "delivery", metadata: [LogKey.id: "42"], priorityPrefix: true, at: time)
        #expect(journald == "<4>delivery id=42", "journald stamps lines itself")
        #expect(MailrouteLogHandler.rfc3339(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
    }
}
