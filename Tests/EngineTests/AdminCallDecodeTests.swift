import AdminProtocol
import Chan
@testable import Engine
import Testing

/// The admin `call` fast path reads its fields without ValueDecoder: it must agree with
/// `Admin.Call.decode` on every body it accepts, and leave every other body to it.
@Suite("admin call bodies: the direct reader agrees with the Codable decode")
struct AdminCallDecodeTests {
    static let accepted: [Value] = [
        .fields(("command", "call"), ("job", "echo")),
        .fields(("command", "call"), ("job", "echo"), ("argument", .fields(("a", 1), ("b", .array(["x", .nil]))))),
        .fields(("command", "call"), ("job", "echo"), ("argument", "ping"), ("timeout_ms", 250)),
        .fields(("command", "call"), ("job", "echo"), ("timeout_ms", .uint(1_000))),
        .fields(("command", "call"), ("job", "echo"), ("timeout_ms", .nil)),
        .fields(("timeout_ms", -5), ("job", "late.key.order"), ("command", "call"), ("extra", true)),
        .fields(("command", "call"), ("job", "echo"), ("argument", .nil)),
    ]

    @Test("every plainly shaped body reads the same as through Admin.Call.decode", arguments: accepted)
    func agrees(_ body: Value) throws {
        let direct = try #require(AdminCommands.directCall(body))
        let decoded = try Admin.Call.decode(body)
        #expect(direct.job == decoded.job)
        #expect(direct.argument == decoded.argument)
        #expect(direct.timeoutMilliseconds == decoded.timeoutMilliseconds)
    }

    static let refused: [Value] = [
        .fields(("command", "call")),
        .fields(("command", "call"), ("job", 7)),
        .fields(("command", "call"), ("job", .nil)),
        .fields(("command", "call"), ("job", "echo"), ("timeout_ms", "soon")),
        .fields(("command", "call"), ("job", "echo"), ("job", "other")),
        .array(["call", "echo"]),
    ]

    @Test("anything else is left to the Codable decode, which refuses it with bad-request", arguments: refused)
    func leavesTheRest(_ body: Value) {
        #expect(AdminCommands.directCall(body) == nil)
        if case .map = body, body["job"]?.stringValue == nil || body["timeout_ms"].map({ $0.stringValue != nil }) == true {
            #expect(throws: AdminError.self) { try Admin.Call.decode(body) }
        }
    }
}
