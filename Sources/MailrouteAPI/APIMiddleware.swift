import Foundation
import Hummingbird
import Logging
import MailrouteCore

/// Turns whatever a handler threw into SPEC §9's error body; logs the 500s, whose detail the
/// client never sees.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            if let refusal = APIError.from(error) { throw refusal }
            if let http = error as? HTTPError {
                throw APIError(status: http.status, code: "http", message: http.body ?? http.status.reasonPhrase)
            }
            // The type only: a description can carry a row's values or a server's reply.
            logger.error(
                "api request failed",
                metadata: [LogKey.method: "\(request.method)", LogKey.path: "\(request.uri.path)", LogKey.error: "\(type(of: error))"])
            throw APIError(status: .internalServerError, code: "internal", message: "the request could not be completed; the daemon's log says why")
        }
    }
}

/// SPEC §9: every `/v1` request (and `/metrics` with `metrics_auth`) needs
/// `Authorization: Bearer TOKEN`; anything else gets 401 and no hint which part was wrong.
struct BearerAuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let tokens: APITokens
    /// Which paths need the token. Checked here, on the router, before any route matches: a
    /// path that does not exist under /v1 is 401 too, so a prober learns nothing of the API.
    let protects: @Sendable (String) -> Bool

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard protects(request.uri.path) else { return try await next(request, context) }
        guard let header = request.headers[.authorization], header.count > 7,
            header.prefix(7).lowercased() == "bearer ", tokens.accepts(header.dropFirst(7))
        else { throw APIError.unauthorized }
        return try await next(request, context)
    }
}

/// Reading request bodies and query parameters, each failure a 400 naming the field.
enum APIInput {
    /// Decodes a JSON object of `T`, refusing keys `T` does not know (a misspelt
    /// `from_adress` would otherwise be dropped in silence) and bodies over `limit`.
    static func decode<T: Decodable>(_ type: T.Type, from request: Request, limit: Int, keys allowed: Set<String>) async throws -> T {
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit {
            throw HTTPError(.contentTooLarge)
        }
        let buffer = try await request.body.collect(upTo: limit)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        decoder.userInfo[Strict<T>.allowed] = allowed
        do {
            return try decoder.decode(Strict<T>.self, from: Data(buffer: buffer)).value
        } catch let error as DecodingError {
            throw describe(error)
        }
    }

    /// `T`, after its keys are checked against the request's fields, in the same parse (the
    /// body is read once: parsing it twice cost 8 % of an enqueue's CPU).
    struct Strict<Value: Decodable>: Decodable {
        static var allowed: CodingUserInfoKey { CodingUserInfoKey(rawValue: "mailroute.allowed")! }
        let value: Value

        struct AnyKey: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        init(from decoder: any Decoder) throws {
            let allowed = decoder.userInfo[Self.allowed] as? Set<String> ?? []
            // The decoder has made the keys camelCase already; snake_case them back to compare.
            let keys = try decoder.container(keyedBy: AnyKey.self).allKeys.map { APIInput.snake($0.stringValue) }
            if let unknown = keys.sorted().first(where: { !allowed.contains($0) }) {
                throw APIError.invalid(unknown, "is not a field of this request (the fields are \(allowed.sorted().joined(separator: ", ")))")
            }
            value = try Value(from: decoder)
        }
    }

    /// A DecodingError as the field it is about, in JSON's own names.
    static func describe(_ error: DecodingError) -> APIError {
        func path(_ keys: [any CodingKey]) -> String {
            keys.reduce("") { text, key in
                if let index = key.intValue { return "\(text)[\(index)]" }
                let name = snake(key.stringValue)
                return text.isEmpty ? name : "\(text).\(name)"
            }
        }
        switch error {
        case .keyNotFound(let key, let context):
            return .invalid(path(context.codingPath + [key]), "is required")
        case .typeMismatch(let type, let context):
            if context.codingPath.isEmpty { return .invalid("body", "must be a JSON object") }
            return .invalid(path(context.codingPath), "must be \(jsonType(type))")
        case .valueNotFound(let type, let context):
            return .invalid(path(context.codingPath), "must be \(jsonType(type)), not null")
        case .dataCorrupted(let context):
            return .invalid(context.codingPath.isEmpty ? "body" : path(context.codingPath), context.debugDescription)
        @unknown default:
            return .invalid("body", "cannot be read")
        }
    }

    private static func jsonType(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type, is Int64.Type: "an integer"
        case is Double.Type: "a number"
        case is Bool.Type: "true or false"
        case is [String].Type: "an array of strings"
        case is [String: String].Type: "an object of strings"
        default: "of another type"
        }
    }

    /// `contentBase64` as `content_base64`: how a coding key looks in the body.
    static func snake(_ name: String) -> String {
        var out = ""
        for c in name {
            if c.isUppercase { out += "_" + c.lowercased() } else { out.append(c) }
        }
        return out
    }

    static func query(_ request: Request, _ name: String) -> String? {
        request.uri.queryParameters.get(name).map { String($0) }
    }

    /// Refuses query parameters the endpoint does not take, naming the first.
    static func onlyQuery(_ request: Request, _ allowed: Set<String>) throws {
        for (key, _) in request.uri.queryParameters where !allowed.contains("\(key)") {
            throw APIError.invalid("\(key)", "is not a parameter of this request (they are \(allowed.sorted().joined(separator: ", ")))")
        }
    }
}
