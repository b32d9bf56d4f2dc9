import Chan
import Spawn

/// A hostile input: bytes a broken or malicious peer sends.
struct HostileInput: Sendable {
    var name: String
    /// What the bytes are, for a message.
    var what: String
    /// The bytes, given the plugin's max_frame.
    var bytes: @Sendable (_ pluginMaxFrame: Int) -> [UInt8]?
    /// Whether the plugin may go on after it (skip or ignore it) instead of refusing the
    /// session; false when it cannot: after an oversized prefix the stream is out of step.
    var survivable = true

    static func frame(_ body: [UInt8]) -> [UInt8] { WireFrame.framed(body) }

    static let all: [HostileInput] = [
        HostileInput(name: "zero-length", what: "a frame with a length prefix of 0", bytes: { _ in [0, 0, 0, 0] }),
        HostileInput(
            name: "oversized-frame", what: "a length prefix over its max_frame (and no body)",
            bytes: { maxFrame in
                guard maxFrame < 0xFFFF_FFFF else { return nil }
                let n = UInt32(maxFrame + 1)
                return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + [UInt8](repeating: 0x90, count: 16)
            },
            survivable: false
        ),
        HostileInput(name: "invalid-byte", what: "a DATA frame holding the byte 0xc1, which msgpack never uses", bytes: { _ in frame([0x93, 0x02, 0x01, 0xc1]) }),
        HostileInput(name: "trailing-bytes", what: "a CLOSE frame followed by a stray byte in the same body", bytes: { _ in frame([0x92, 0x03, 0x01, 0xc0]) }),
        HostileInput(
            name: "truncated-value", what: "a DATA frame whose array header declares 1,000,000 elements in a 9-byte body",
            bytes: { _ in frame([0x93, 0x02, 0x01, 0xdd, 0x00, 0x0f, 0x42, 0x40, 0xc0]) }
        ),
        HostileInput(name: "invalid-utf8", what: "an OPEN whose label is not UTF-8", bytes: { _ in frame([0x93, 0x01, 0xcd, 0x03, 0xe7, 0xa2, 0xff, 0xfe]) }),
        HostileInput(
            name: "too-deep", what: "a DATA frame nested 33 deep (the limit is 32, counting the frame's array)",
            bytes: { _ in frame([0x93, 0x02, 0x01] + [UInt8](repeating: 0x91, count: 31) + [0x90]) }
        ),
        HostileInput(
            name: "bad-reference", what: "a channel reference (ext 0x50) with 4 bytes of payload instead of 8",
            bytes: { _ in frame([0x93, 0x02, 0x01, 0xd6, 0x50, 0x00, 0x00, 0x00, 0x09]) }
        ),
        HostileInput(name: "unknown-frame-type", what: "a frame of type 9", bytes: { _ in frame([0x92, 0x09, 0x01]) }),
        HostileInput(name: "wrong-arity", what: "a CLOSE frame without its channel id", bytes: { _ in frame([0x91, 0x03]) }),
        HostileInput(
            name: "unknown-channel", what: "DATA on channel 1001, which the kit never opened",
            bytes: { _ in frame([0x93, 0x02, 0xcd, 0x03, 0xe9, 0xa5, 0x68, 0x65, 0x6c, 0x6c, 0x6f]) }
        ),
        HostileInput(name: "wrong-parity", what: "an OPEN of channel 2, an id only the plugin allocates", bytes: { _ in frame([0x93, 0x01, 0x02, 0xa1, 0x78]) }),
        HostileInput(
            name: "second-hello", what: "a second HELLO",
            bytes: { _ in
                (try? WireFrame.hello(.fields(("protocol", 1), ("name", "plugboardd"), ("max_frame", 1_048_576), ("window", 262_144), ("meta", .map([])))).encoded()) ?? []
            }
        ),
    ]
}

extension Runner {
    func hostileCases(_ declaration: Declaration) async {
        for input in HostileInput.all {
            await run("hostile.\(input.name)") {
                let session = try await fresh()
                _ = await session.calls()
                guard let bytes = input.bytes(await session.pluginMaxFrame) else {
                    _ = await end(session)
                    throw NotApplicable("its max_frame is 4294967295: no length prefix is larger")
                }
                await session.sendRaw(bytes)
                // A plugin that survives answers the next call; one that refuses ends the session.
                let target = input.survivable ? callable(declaration) : nil
                var reply: Reply?
                if let target, let id = await session.startCall(invocation(target), timeout: timeout) {
                    reply = await session.awaitReply(id, timeout: timeout)
                } else {
                    _ = await session.waitForEnd(timeout)
                }
                let over = await session.isOver
                if let goaway = await session.goaway {
                    guard let status = await session.run.process.waitForExit(timeout: grace) else {
                        throw await fail(session, "refused \(input.what) with GOAWAY \"\(goaway)\" but was still running \(grace.inSeconds) later")
                    }
                    _ = await end(session)
                    if case .signaled = status { throw Failure("sent GOAWAY \"\(goaway)\" after \(input.what), then was \(status)") }
                    return ("refused: GOAWAY \"\(goaway)\"", nil)
                }
                if over {
                    let status = await session.run.process.waitForExit(timeout: grace)
                    _ = await end(session)
                    let how = status.map { "\($0)" } ?? "closed its fd 4"
                    if case .signaled? = status { throw Failure("after \(input.what) it was \(how), without a GOAWAY") }
                    throw Failure("ended the session after \(input.what) without a GOAWAY saying why (\(how)): a protocol violation is answered with GOAWAY and a reason")
                }
                if let reply, reply.outcome.isAnswer {
                    let broken = await session.violationSummary
                    _ = await end(session)
                    if let broken { throw Failure(broken) }
                    return ("survived: ignored it and answered the next call", nil)
                }
                let how = reply.map { "the next call: it \($0.outcome)" } ?? "it neither sent a GOAWAY nor exited within \(timeout.inSeconds)"
                throw await fail(session, input.survivable
                    ? "after \(input.what): \(how); a plugin refuses bad input with GOAWAY and exits, or goes on serving"
                    : "did not refuse \(input.what) before reading its body: \(how)")
            }
        }
    }
}
