import Foundation
import Testing

@testable import MailrouteCore

/// The message trace (issue 13): `MessageFilter`'s text forms.
@Suite struct MessageTraceTests {
    static let now = 1_796_083_200.0  // 2026-12-01T00:00:00Z

    // MARK: - The text forms

    @Test func theTextFormsParse() throws {
        let now = Self.now
        let filter = try MessageFilter(
            tenant: "acme", status: "sent", config: "acme/main", route: "fallback", since: "1h", domain: "@Example.COM", limit: "50",
            now: now)
        #expect(filter == MessageFilter(
            tenant: "acme", status: .sent, config: ConfigRef(tenant: "acme", name: "main"), route: .fallback, since: now - 3600,
            recipientDomain: "example.com", limit: 50))
        let nothing = try MessageFilter(tenant: nil, status: "", config: " ", route: nil, since: nil, domain: nil, limit: nil)
        #expect(nothing == MessageFilter(), "absent or empty is any, and the limit its default")
        #expect(nothing.limit == 100)

        let forms: [(String, Double)] = [
            ("-3600", now - 3600), ("90s", now - 90), ("30m", now - 1800), ("-30m", now - 1800), ("2d", now - 172_800),
            ("1.5h", now - 5400), ("1796083200", now), ("1796083200.5", now + 0.5), ("2026-12-01T00:00:00Z", now),
            ("2026-12-01T01:00:00+01:00", now), ("2026-12-01T00:00:00.250Z", now + 0.25), ("2026-12-01", now),
        ]
        for (text, expected) in forms {
            let since = try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: text, domain: nil, limit: nil, now: now).since
            #expect(since == expected, "\(text)")
        }
    }

    @Test func eachBadValueNamesItsField() {
        let cases: [(field: String, value: String)] = [
            ("tenant", "a/b"), ("status", "bogus"), ("config", "acme"), ("config", "acme/"), ("config", "/main"), ("config", "a/b/c"),
            ("route", "nowhere"), ("since", "yesterday"), ("since", "3600"), ("since", "1796083200000"), ("since", "nan"),
            ("since", "-inf"), ("since", "1e9"), ("since", "5w"), ("domain", "not a domain"), ("domain", "com"),
            ("domain", "a@x.com"), ("limit", "0"), ("limit", "1001"), ("limit", "ten"), ("limit", "-5"),
        ]
        for (field, value) in cases {
            func text(_ name: String) -> String? { name == field ? value : nil }
            do {
                _ = try MessageFilter(
                    tenant: text("tenant"), status: text("status"), config: text("config"), route: text("route"), since: text("since"),
                    domain: text("domain"), limit: text("limit"), now: Self.now)
                Issue.record("\(field)=\(value) was accepted")
            } catch MailrouteError.invalid(let named, let reason) {
                #expect(named == field, "\(field)=\(value): \(reason)")
            } catch {
                Issue.record("\(field)=\(value): \(error)")
            }
        }
        #expect(throws: MailrouteError.invalid(
            field: "since", reason: "3600 is not Unix seconds between 2000 and 2200 (milliseconds? divide by 1000; seconds ago? write -3600)")
        ) {
            try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: "3600", domain: nil, limit: nil)
        }
    }

    @Test func anInternationalizedDomainIsMatchedInBothSpellings() throws {
        let filter = try MessageFilter(tenant: nil, status: nil, config: nil, route: nil, since: nil, domain: "Bücher.DE", limit: nil)
        #expect(filter.recipientDomainForms == ["bücher.de", "xn--bcher-kva.de"])
        #expect(MessageFilter(recipientDomain: "x.com").recipientDomainForms == ["x.com"])
    }
}
