#if canImport(Glibc)
import Glibc
#endif
import Testing
import TestSupport
@testable import Chan

/// The session against a peer played by hand, byte for byte: the framing docs/PROTOCOL.md
/// describes, with a default Swift session's HELLO (max_frame 16 MiB). The worked example
/// there — the daemon's own HELLO announces 1 MiB to plugins — is replayed against a real
/// daemon by `DaemonWireTests`.
@Suite("the wire, byte for byte")
struct WireTests {
    @Test("our HELLO is the bytes the protocol document shows")
    func helloBytes() async throws {
        let raw = try await RawPeer.make(configuration: .init(name: "plugboardd", handshakeTimeout: .seconds(30)))
        let starting = Task { try await raw.session.start() }
        let hello = try #require(try await raw.readFrame())
        let expected: Value = .array([0, .map([
            (key: "protocol", value: 1), (key: "name", value: "plugboardd"),
            (key: "max_frame", value: 16_777_216), (key: "window", value: 262_144), (key: "meta", value: .map([])),
        ])])
        #expect(hello == expected)
        // The exact bytes documented in docs/PROTOCOL.md, section "Worked example".
        let documented: [UInt8] = [
            0x92, 0x00, 0x85,
            0xa8, 0x70, 0x72, 0x6f, 0x74, 0x6f, 0x63, 0x6f, 0x6c, 0x01,
            0xa4, 0x6e, 0x61, 0x6d, 0x65, 0xaa, 0x70, 0x6c, 0x75, 0x67, 0x62, 0x6f, 0x61, 0x72, 0x64, 0x64,
            0xa9, 0x6d, 0x61, 0x78, 0x5f, 0x66, 0x72, 0x61, 0x6d, 0x65, 0xce, 0x01, 0x00, 0x00, 0x00,
            0xa6, 0x77, 0x69, 0x6e, 0x64, 0x6f, 0x77, 0xce, 0x00, 0x04, 0x00, 0x00,
            0xa4, 0x6d, 0x65, 0x74, 0x61, 0x80,
        ]
        #expect(try Msgpack.encode(hello) == documented)
        try raw.send(frame: helloBody(name: "echo"))
        _ = try await withDeadline { try await starting.value }

        // A request exactly as the document's worked example spells it.
        try raw.send(frame: .array([1, 2, "calls"]))  // OPEN channel 2
        let inbox = try #require(try await withDeadline { try await raw.session.accept() })
        #expect(inbox.label == "calls")
        let request: [UInt8] = [
            0x93, 0x02, 0x02,
            0x82, 0xa4, 0x62, 0x6f, 0x64, 0x79, 0xa2, 0x68, 0x69,
            0xa5, 0x72, 0x65, 0x70, 0x6c, 0x79, 0xd7, 0x50, 0, 0, 0, 0, 0, 0, 0, 0x04,
        ]
        raw.send(bytes: lengthPrefix(request.count) + request)
        let r = try #require(try await withDeadline { try await inbox.nextRequest() })
        #expect(r.body == "hi")
        try await r.respond("hi")
        let reply = try #require(try await raw.readFrame())
        #expect(try Msgpack.encode(reply) == [0x94, 0x02, 0x04, 0x81, 0xa2, 0x6f, 0x6b, 0xa2, 0x68, 0x69, 0xc3])
        raw.session.close()
        raw.closeAll()
    }

    @Test("a peer speaking another protocol version is refused with a clear error, and told why")
    func incompatibleVersion() async throws {
        let raw = try await RawPeer.make()
        let starting = Task { try await raw.session.start() }
        _ = try await raw.readFrame()
        try raw.send(frame: helloBody(protocol: 2))
        await #expect {
            try await withDeadline { try await starting.value }
        } throws: { error in
            let e = error as? ChanError
            return e?.code == .incompatibleProtocol && e?.reason.contains("protocol 2") == true
        }
        let goAway = try #require(try await raw.readFrame())
        #expect(goAway.arrayValue?.first == 6)
        #expect(goAway.arrayValue?.last?.stringValue?.contains("protocol 2") == true)
        raw.closeAll()
    }

    @Test("frames before HELLO, malformed frames and oversized lengths end the session with a protocol error", arguments: [
        "data-before-hello", "not-an-array", "bad-msgpack", "oversized", "unknown-channel", "window-overrun",
    ])
    func violations(_ kind: String) async throws {
        // A small maximum frame keeps the flood needed to overrun window + one frame short.
        let raw = try await RawPeer.make(configuration: .init(name: "engine", maxFrameSize: 64 * 1024, window: 4096, handshakeTimeout: .seconds(20)))
        let starting = Task { try await raw.session.start() }
        _ = try await raw.readFrame()
        if kind != "data-before-hello" {
            try raw.send(frame: helloBody())
            _ = try await withDeadline { try await starting.value }
        }
        switch kind {
        case "data-before-hello": try raw.send(frame: [2, 2, "early"])
        case "not-an-array": try raw.send(frame: ["type": 2])
        case "bad-msgpack": raw.send(bytes: lengthPrefix(3) + [0x92, 0x02, 0xc1])
        case "oversized": raw.send(bytes: [0x7f, 0xff, 0xff, 0xff, 0x00])
        case "unknown-channel": try raw.send(frame: [2, 1000, "who?"])
        default:
            try raw.send(frame: [1, 2, "flood"])
            for _ in 0..<40 {
                try raw.send(frame: [2, 2, .binary([UInt8](repeating: 0, count: 4000))])
            }
        }
        let reason = try await withDeadline { await raw.session.waitUntilClosed() }
        #expect(reason.code == .protocolViolation, "\(reason)")
        // The peer is told why before the transport closes, even for framing errors.
        let goAway = try await withDeadline { try await raw.readFrame() }
        #expect(goAway?.arrayValue?.first == 6, "expected GOAWAY, got \(String(describing: goAway))")
        raw.closeAll()
    }
}
