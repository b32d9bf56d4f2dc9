import Foundation
import Spawn
import Testing
import TestSupport
@testable import Chan

/// What one frame may cost once decoded: the structural guard counts its msgpack values.
@Suite("values per frame: what a frame may cost once decoded")
struct FrameValueLimitTests {
    func refusal(_ bytes: [UInt8], limits: DecodingLimits = .default) -> CodecError? {
        do {
            _ = try Msgpack.decode(bytes, limits: limits)
            return nil
        } catch {
            return error as? CodecError
        }
    }

    @Test("a frame of a million nils (1 MiB that used to decode to ~41 MiB) is refused at its header")
    func millionNils() throws {
        let bytes: [UInt8] = [0xdd, 0x00, 0x0f, 0x42, 0x40] + [UInt8](repeating: 0xc0, count: 1_000_000)
        let error = try #require(refusal(bytes))
        #expect(error.code == .tooManyValues)
        // Refused at the array header, before one element is walked or msgpack-c allocates.
        #expect(error.offset == 0)
        #expect(error.reason.contains("limit \(DecodingLimits.defaultMaxValues)"), "\(error)")
        #expect(DecodingLimits.default.maxValues == 262_144)
    }

    @Test("every value counts, at any depth: containers, elements, and a map entry as two")
    func counting() throws {
        let tenValues: [UInt8] = [0x99] + [UInt8](repeating: 0xc0, count: 9)         // [nil × 9]
        #expect(refusal(tenValues, limits: DecodingLimits(maxValues: 10)) == nil)
        #expect(refusal(tenValues, limits: DecodingLimits(maxValues: 9))?.code == .tooManyValues)

        // Small arrays, none over the limit at its header: the walk counts them one by one.
        let nested: [UInt8] = [0x95] + [UInt8]([0x91, 0xc0, 0x91, 0xc0, 0x91, 0xc0, 0x91, 0xc0, 0x91, 0xc0])  // [[nil] × 5]
        #expect(refusal(nested, limits: DecodingLimits(maxValues: 11)) == nil)
        let deep = try #require(refusal(nested, limits: DecodingLimits(maxValues: 10)))
        #expect(deep.code == .tooManyValues)
        // Refused at the header of the fifth inner array (byte 9): its element would be the 11th value.
        #expect(deep.offset == 9)

        let map: [UInt8] = [0x81, 0x01, 0x92, 0xc0, 0xc0]                             // {1: [nil, nil]}
        #expect(try map.withUnsafeBytes { try StructuralGuard.check($0, limits: .default) } == 5)
        #expect(refusal(map, limits: DecodingLimits(maxValues: 4))?.code == .tooManyValues)
    }

    @Test("the guard, the packer and Value.msgpackValueCount count alike")
    func countsAgree() throws {
        let values: [Value] = [
            .nil, 1, "text", .binary([1, 2, 3]), .ext(type: 7, data: [1]),
            .array([]), .map([]), [1, [2, [3, .nil]], "x"],
            .fields(("a", 1), ("b", [true, false]), ("c", .fields(("d", .nil)))),
        ]
        for value in values {
            let bytes = try Msgpack.encode(value)
            let guarded = try bytes.withUnsafeBytes { try StructuralGuard.check($0, limits: .default) }
            let packer = MsgpackPacker()
            try packer.pack(value, resolver: nil)
            #expect(guarded == value.msgpackValueCount, "\(value)")
            #expect(packer.values == value.msgpackValueCount, "\(value)")
        }
    }

    @Test("a peer's frame over the limit ends the session as a protocol violation naming the limit")
    func peerFrameOverLimit() async throws {
        let raw = try await RawPeer.make(configuration: .init(name: "engine", maxValues: 1000, handshakeTimeout: .seconds(20)))
        let starting = Task { try await raw.session.start() }
        _ = try await raw.readFrame()
        try raw.send(frame: helloBody())
        _ = try await withDeadline { try await starting.value }
        try raw.send(frame: [1, 2, "calls"])
        let channel = try #require(try await withDeadline { try await raw.session.accept() })
        // Just under: [2, 2, [nil × 996]] is 1 + 2 + 1 + 996 = 1000 values.
        try raw.send(frame: [2, 2, .array([Value](repeating: .nil, count: 996))])
        #expect(try await withDeadline { try await channel.receive() }?.arrayValue?.count == 996)
        // One more is over.
        try raw.send(frame: [2, 2, .array([Value](repeating: .nil, count: 997))])
        let reason = try await withDeadline { await raw.session.waitUntilClosed() }
        #expect(reason.code == .protocolViolation)
        #expect(reason.reason.contains("too many values") && reason.reason.contains("limit 1000"), "\(reason)")
        let goAway = try await withDeadline { try await raw.readFrame() }
        #expect(goAway?.arrayValue?.first == 6)
        #expect(goAway?.arrayValue?.last?.stringValue?.contains("limit 1000") == true, "\(String(describing: goAway))")
        raw.closeAll()
    }

    @Test("unread messages may cost at most window + max values values, whatever their bytes")
    func unreadValuesBounded() async throws {
        // 4 KiB window, 1000 values per frame: nil-dense frames of ~900 bytes overrun the
        // values (4096 + 1000) long before the bytes (4096 + 64 KiB).
        let raw = try await RawPeer.make(configuration: .init(name: "engine", maxFrameSize: 64 * 1024, window: 4096, maxValues: 1000, handshakeTimeout: .seconds(20)))
        let starting = Task { try await raw.session.start() }
        _ = try await raw.readFrame()
        try raw.send(frame: helloBody())
        _ = try await withDeadline { try await starting.value }
        try raw.send(frame: [1, 2, "unread"])
        for _ in 0..<6 {
            try raw.send(frame: [2, 2, .array([Value](repeating: .nil, count: 900))])
        }
        let reason = try await withDeadline { await raw.session.waitUntilClosed() }
        #expect(reason.code == .protocolViolation)
        #expect(reason.reason.contains("msgpack values unread"), "\(reason)")
        raw.closeAll()
    }

    @Test("a Swift sender refuses locally to send a frame over the limit; the session goes on", arguments: PairKind.allCases)
    func localRefusal(_ kind: PairKind) async throws {
        let (a, b) = try await boundedPair(kind, a: .init(name: "a", maxValues: 1000), b: .init(name: "b", maxValues: 1000))
        let sender = try a.open(label: "big")
        let receiver = try #require(try await withDeadline { try await b.accept() })
        await #expect {
            try await sender.send(.array([Value](repeating: .nil, count: 997)))
        } throws: { error in
            let e = error as? CodecError
            return e?.code == .tooManyValues && e?.reason.contains("limit 1000") == true
        }
        try await sender.send(.array([Value](repeating: .nil, count: 996)))
        #expect(try await withDeadline { try await receiver.receive() }?.arrayValue?.count == 996)
        #expect(a.closeReason == nil && b.closeReason == nil)
        a.close()
        b.close()
    }
}

/// What channels a peer may hold open on a session.
@Suite("open channels per session: OPENs past the limit are refused, the session goes on")
struct ChannelLimitTests {
    @Test("OPENs past the limit get a RESET that says why; other channels keep working; a closed one frees its place")
    func openLimit() async throws {
        let raw = try await RawPeer.make(configuration: .init(name: "engine", maxChannelsOpenedByPeer: 3, handshakeTimeout: .seconds(20)))
        let starting = Task { try await raw.session.start() }
        _ = try await raw.readFrame()
        try raw.send(frame: helloBody())
        _ = try await withDeadline { try await starting.value }
        for id in [2, 4, 6, 8, 10] { try raw.send(frame: [1, .int(Int64(id)), "engine"]) }
        #expect(try await withDeadline { try await raw.readFrame() } == [5, 8, "too many open channels: limit 3"])
        #expect(try await withDeadline { try await raw.readFrame() } == [5, 10, "too many open channels: limit 3"])
        var receivers: [Receiver] = []
        for _ in 0..<3 { receivers.append(try #require(try await withDeadline { try await raw.session.accept() })) }
        let accepted = receivers
        #expect(accepted.map(\.id) == [2, 4, 6])

        // DATA the opener sent right after a refused OPEN is a late frame: dropped and counted.
        try raw.send(frame: [2, 10, "after my OPEN"])
        try raw.send(frame: [2, 2, "on a kept channel"])
        #expect(try await withDeadline { try await accepted[0].receive() } == "on a kept channel")
        var stats = raw.session.statistics
        #expect(stats.refusedOpens == 2)
        #expect(stats.channelsOpenedByPeer == 3)
        #expect(stats.droppedAfterClose == 1)
        #expect(raw.session.closeReason == nil)

        // The peer closes channel 4; once its end is read, it no longer counts.
        try raw.send(frame: [3, 4])
        #expect(try await withDeadline { try await accepted[1].receive() } == nil)
        try raw.send(frame: [1, 12, "engine"])
        let again = try #require(try await withDeadline { try await raw.session.accept() })
        #expect(again.id == 12)
        stats = raw.session.statistics
        #expect(stats.refusedOpens == 2 && stats.channelsOpenedByPeer == 3)
        raw.session.close()
        raw.closeAll()
    }

    @Test("a Swift opener sees the refused channel reset with the reason, without sending", arguments: PairKind.allCases)
    func openerSeesReset(_ kind: PairKind) async throws {
        let (a, b) = try await boundedPair(kind, a: .init(name: "a"), b: .init(name: "b", maxChannelsOpenedByPeer: 2))
        let echo = serveEcho(b)
        let senders = try (0..<4).map { _ in try a.open(label: "calls") }
        // b answers in order: once this reply is here, so are the RESETs of the OPENs before it.
        #expect(try await withDeadline { try await senders[0].request("ping") } == "ping")
        #expect(senders[0].sendFailure == nil && senders[1].sendFailure == nil)
        for refused in senders[2...] {
            let failure = try #require(refused.sendFailure)
            #expect(failure.code == .channelReset)
            #expect(failure.reason.hasSuffix("too many open channels: limit 2"), "\(failure)")
            await #expect(throws: ChanError.self) { try await refused.send("anyone?") }
        }
        #expect(try await withDeadline { try await senders[1].request("still here") } == "still here")
        #expect(b.statistics.refusedOpens == 2)
        a.close()
        b.close()
        echo.cancel()
    }

    @Test("channel ends the peer sent count until closed; past their limit the session ends as a protocol violation")
    func endsLimit() async throws {
        let raw = try await RawPeer.make(configuration: .init(name: "engine", maxEndsSentByPeer: 2, handshakeTimeout: .seconds(20)))
        let starting = Task { try await raw.session.start() }
        _ = try await raw.readFrame()
        try raw.send(frame: helloBody())
        _ = try await withDeadline { try await starting.value }
        try raw.send(frame: [1, 2, "calls"])
        let channel = try #require(try await withDeadline { try await raw.session.accept() })
        func ends(_ ids: [UInt64]) -> Value {
            .array(ids.map { .ext(type: ChannelReference.Kind.sender.rawValue, data: ChannelReference(kind: .sender, id: $0).payload) })
        }
        // Two ends: at the limit. Dropping them closes them (a CLOSE each), which frees their places.
        try raw.send(frame: [2, 2, ends([4, 6])])
        do {
            let message = try #require(try await withDeadline { try await channel.receive() })
            #expect(message.arrayValue?.count == 2)
            #expect(raw.session.statistics.endsSentByPeer == 2)
        }
        let closes = [try await withDeadline { try await raw.readFrame() }, try await withDeadline { try await raw.readFrame() }]
        #expect(Set(closes.compactMap { $0?.arrayValue?.last?.intValue }) == [4, 6])
        #expect(closes.allSatisfy { $0?.arrayValue?.first == 3 })
        #expect(raw.session.statistics.endsSentByPeer == 0)
        // Three at once: past the limit.
        try raw.send(frame: [2, 2, ends([8, 10, 12])])
        let reason = try await withDeadline { await raw.session.waitUntilClosed() }
        #expect(reason.code == .protocolViolation)
        #expect(reason.reason.contains("too many channel ends sent by the peer and open here: limit 2"), "\(reason)")
        raw.closeAll()
    }
}

/// Two started sessions of `kind` with the given configurations.
func boundedPair(_ kind: PairKind, a: Session.Configuration, b: Session.Configuration) async throws -> (Session, Session) {
    let x: Session
    let y: Session
    switch kind {
    case .inMemory:
        (x, y) = Session.inMemoryPair(a, b, logger: quietLogger)
    case .pipes:
        let ab = try PipeDescriptors.make()
        let ba = try PipeDescriptors.make()
        x = try await Session.overFileDescriptors(read: ba.readEnd, write: ab.writeEnd, role: .initiator, configuration: a, logger: quietLogger)
        y = try await Session.overFileDescriptors(read: ab.readEnd, write: ba.writeEnd, role: .acceptor, configuration: b, logger: quietLogger)
    }
    async let started1 = x.start()
    async let started2 = y.start()
    _ = try await (started1, started2)
    return (x, y)
}

/// Concurrent sends on one channel (a plugin's many calls on its one engine channel).
@Suite("flow control holds for concurrent sends on one channel")
struct ConcurrentSendTests {
    @Test("100 concurrent sends of near-maximum frames never overrun the receiver's window", .heavy, arguments: PairKind.allCases)
    func concurrentSends(_ kind: PairKind) async throws {
        // A window far smaller than a frame: two sends that both passed the credit check
        // before either was charged would put 120 KB outstanding, over window + max_frame
        // (4096 + 65536), and the receiver would cut the session off. FloodTests hit this.
        let config = { (name: String) in Session.Configuration(name: name, maxFrameSize: 64 * 1024, window: 4096) }
        let (a, b) = try await boundedPair(kind, a: config("a"), b: config("b"))
        let sender = try a.open(label: "many")
        let receiver = try #require(try await withDeadline { try await b.accept() })
        try await withDeadline(60, "100 concurrent sends and their reading") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<100 {
                    group.addTask { try await sender.send(.binary([UInt8](repeating: UInt8(i), count: 60_000))) }
                }
                var seen: Set<UInt8> = []
                for _ in 0..<100 {
                    guard case .binary(let bytes)? = try await receiver.receive() else { break }
                    seen.insert(bytes[0])
                }
                try await group.waitForAll()
                #expect(seen.count == 100)
            }
        }
        #expect(a.closeReason == nil && b.closeReason == nil, "\(String(describing: b.closeReason))")
        a.close()
        b.close()
    }
}
