import Foundation
import GRDB
import Hummingbird
import MailrouteCore
import NIOCore
import PostgresNIO

/// Every refusal the API sends: `{"error": {"code", "message", "field"?}}` (SPEC §9), with
/// the status derived here, once, from what the operation threw.
struct APIError: Error, HTTPResponseError {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    /// The JSON field (or query parameter) that is wrong, for a 400.
    var field: String?
    /// For a duplicate idempotency key: the message that already has it (SPEC §9: `409 {"id": N}`).
    var existingID: Int64?

    static let unauthorized = APIError(status: .unauthorized, code: "unauthorized", message: "a valid bearer token is required")

    static func invalid(_ field: String, _ reason: String) -> APIError {
        APIError(status: .badRequest, code: "invalid", message: "\(field): \(reason)", field: field)
    }

    static func notFound(_ what: String) -> APIError {
        APIError(status: .notFound, code: "not_found", message: "\(what) not found")
    }

    private struct Body: Encodable {
        struct Detail: Encodable {
            var code: String
            var message: String
            var field: String?
        }
        var error: Detail
        var id: Int64?
    }

    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = try JSONResponse.make(
            Body(error: Body.Detail(code: code, message: message, field: field), id: existingID), status: status)
        if status == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer" }
        if status == .serviceUnavailable { response.headers[.retryAfter] = "1" }
        return response
    }

    /// What a client may be told about `error`. Operator-facing sentences (MailrouteError, the
    /// databases' own CHECK sentences) pass; anything else is a 500 with no detail, since its
    /// description could hold what a client must not see.
    static func from(_ error: any Error) -> APIError? {
        switch error {
        case let error as APIError:
            return error
        case let error as MailrouteError:
            switch error {
            case .invalid(let field, let reason): return .invalid(jsonName(field), reason)
            case .notFound(let what): return .notFound(what)
            case .conflict(let why): return APIError(status: .conflict, code: "conflict", message: why)
            case .rule(let why): return APIError(status: .unprocessableContent, code: "rule", message: why)
            case .schemaNewer, .permission: return nil
            }
        case let error as DuplicateMessage:
            return APIError(status: .conflict, code: "duplicate", message: error.description, existingID: error.id)
        case let error as BlockingWork.Busy:
            return APIError(status: .serviceUnavailable, code: "busy", message: error.description)
        case let error as SecretError:
            // The daemon's own setup (its key), not the request: the operator's sentence says what to fix.
            return APIError(status: .serviceUnavailable, code: "no_key", message: error.description)
        case _ where DatabaseFault.isTransient(error):
            // Full, locked or unreachable: the same request may succeed in a moment.
            return APIError(status: .serviceUnavailable, code: "unavailable", message: DatabaseFault(error).headline + "; try again")
        case let error as HTTPError where error.status == .contentTooLarge:
            return tooLarge
        case is NIOTooManyBytesError:
            // A chunked body has no Content-Length to refuse up front: collecting it stops at the limit.
            return tooLarge
        case let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT:
            return sqliteRefusal(error)
        case let error as PostgresStore.Failure:
            guard let state = error.sqlState, state.hasPrefix("23") || state == "P0001" else { return nil }
            return refused(error.column ?? firstWord(error.description), error.description)
        case let error as PSQLError:
            // Class 23 (integrity) and the schema's own RAISE EXCEPTION (P0001) name the column too.
            guard let state = error.serverInfo?[.sqlState], state.hasPrefix("23") || state == "P0001" else { return nil }
            let sentence = PostgresStore.describe(error)
            return refused(error.serverInfo?[.columnName] ?? firstWord(sentence), sentence)
        default:
            return nil
        }
    }

    static let tooLarge = APIError(status: .contentTooLarge, code: "too_large", message: "the request body is over the limit ([api] max_body_bytes)")

    /// SQLite's constraint sentences: a CHECK's and the schema's triggers' name the column
    /// ("CHECK constraint failed: rcpt_to must be …"), NOT NULL's name table.column; a UNIQUE
    /// one is something that exists already. Anything else is not the client's to fix.
    private static func sqliteRefusal(_ error: DatabaseError) -> APIError? {
        let message = error.message ?? ""
        if message.hasPrefix("CHECK constraint failed: ") {
            let sentence = String(message.dropFirst("CHECK constraint failed: ".count))
            return refused(firstWord(sentence), sentence)
        }
        if message.hasPrefix("NOT NULL constraint failed: ") {
            let column = message.split(separator: ".").last.map(String.init) ?? "body"
            return .invalid(column, "is required")
        }
        if message.hasPrefix("UNIQUE constraint failed: ") {
            return APIError(status: .conflict, code: "conflict", message: "that exists already (\(message.dropFirst("UNIQUE constraint failed: ".count)))")
        }
        if error.extendedResultCode == .SQLITE_CONSTRAINT_TRIGGER { return refused(firstWord(message), message) }
        return nil
    }

    /// A database's refusal: its sentence already starts with the column's name.
    private static func refused(_ field: String, _ sentence: String) -> APIError {
        APIError(status: .badRequest, code: "invalid", message: sentence, field: field.isEmpty ? "body" : field)
    }

    /// `--from-address` (the CLI's name for a field, which Core's rules use) as JSON's `from_address`.
    static func jsonName(_ field: String) -> String {
        guard field.hasPrefix("--") else { return field }
        return String(field.dropFirst(2)).replacingOccurrences(of: "-", with: "_")
    }

    private static func firstWord(_ sentence: String) -> String {
        String(sentence.prefix(while: { $0.isLetter || $0.isNumber || $0 == "_" }))
    }
}

enum JSONResponse {
    static func make(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try JSONEncoder.mailroute(pretty: false).encode(value)
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// A small acknowledgement (`{"cancelled": 42}`), with JSON's own numbers and booleans.
    static func object(_ value: [String: any Sendable], status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes])
        return Response(
            status: status, headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }
}
