#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import Testing
import TestSupport
@testable import Chan

@Suite("sessions: channels, nesting, request/reply, streams, flow control")
struct SessionTests {
    @Test("the handshake tells each side the other's name and limits", arguments: PairKind.allCases)
    func handshake(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        #expect(a.peer?.name == "b")
        #expect(b.peer?.name == "a")
        #expect(a.peer?.maxFrameSize == 16 * 1024 * 1024)
        #expect(a.peer?.protocolVersion == 1)
        a.close()
        b.close()
    }

    @Test("channels opened from either side carry messages in order", arguments: PairKind.allCases)
    func openFromEitherSide(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        try await withDeadline {
            let fromA = try a.open(label: "a-to-b")
            let fromB = try b.open(label: "b-to-a")
            for i in 0..<500 { try await fromA.send(.int(Int64(i))) }
            for i in 0..<500 { try await fromB.send(.int(Int64(-i))) }
            fromA.close()
            fromB.close()
            let atB = try #require(try await b.accept())
            let atA = try #require(try await a.accept())
            #expect(atB.label == "a-to-b")
            #expect(atA.label == "b-to-a")
            var got: [Value] = []
            for try await v in atB { got.append(v) }
            #expect(got == (0..<500).map { Value.int(Int64($0)) })
            got = []
            for try await v in atA { got.append(v) }
            #expect(got == (0..<500).map { Value.int(Int64(-$0)) })
        }
        a.close()
        b.close()
    }

    @Test("many channels multiplexed on one session stay separate", arguments: PairKind.allCases)
    func multiplexed(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        try await withDeadline {
            let senders = try (0..<20).map { try a.open(label: "c\($0)") }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (n, sender) in senders.enumerated() {
                    group.addTask {
                        for i in 0..<50 { try await sender.send(.array([.int(Int64(n)), .int(Int64(i))])) }
                        sender.close()
                    }
                }
                try await group.waitForAll()
            }
            for _ in 0..<20 {
                let receiver = try #require(try await b.accept())
                let n = Int(receiver.label.dropFirst()) ?? -1
                var i = 0
                for try await v in receiver {
                    #expect(v == .array([.int(Int64(n)), .int(Int64(i))]))
                    i += 1
                }
                #expect(i == 50)
            }
        }
        a.close()
        b.close()
    }

    @Test("a message can carry a Receiver: the peer reads what we send on the kept Sender", arguments: PairKind.allCases)
    func nestedReceiver(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        try await withDeadline {
            let control = try a.open()
            let (dataSender, dataReceiver) = try a.makePipe()
            try await control.send(["data": .channel(.receiver(dataReceiver))])
            let inbox = try #require(try await b.accept())
            let message = try #require(try await inbox.receive())
            guard case .channel(.receiver(let remoteReceiver))? = message["data"] else {
                Issue.record("expected a Receiver, got \(message)")
                return
            }
            try await dataSender.send("first")
            try await dataSender.finish(with: "last")
            #expect(try await remoteReceiver.receive() == "first")
            #expect(try await remoteReceiver.receive() == "last")
            #expect(try await remoteReceiver.receive() == nil)
        }
        a.close()
        b.close()
    }

    @Test("a message can carry a Sender: request/reply is built on it", arguments: PairKind.allCases)
    func requestReply(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        let server = serveEcho(b)
        // Deadlines for a loaded machine: make sanitize runs the whole suite at once under TSan.
        try await withDeadline(120) {
            let calls = try a.open(label: "calls")
            #expect(try await calls.request(["x": 1], timeout: .seconds(60)) == ["x": 1])
            let results = try await withThrowingTaskGroup(of: Value.self) { group in
                for i in 0..<200 { group.addTask { try await calls.request(.int(Int64(i)), timeout: .seconds(60)) } }
                var all: [Value] = []
                for try await r in group { all.append(r) }
                return all
            }
            #expect(Set(results) == Set((0..<200).map { Value.int(Int64($0)) }))
        }
        #expect(a.statistics.openChannels <= 1, "reply channels are released after their reply")
        a.close()
        b.close()
        server.cancel()
    }

    @Test("a remote error reaches the caller with its code and message", arguments: PairKind.allCases)
    func remoteError(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        let server = Task {
            let inbox = try #require(try await b.accept())
            while let request = try await inbox.nextRequest() {
                try await request.fail(code: "job.unknown", message: "no job named frobnicate")
            }
        }
        try await withDeadline {
            let calls = try a.open()
            await #expect {
                try await calls.request("frobnicate")
            } throws: { error in
                let e = error as? ChanError
                return e?.code == .remote && e?.remoteCode == "job.unknown" && e?.reason == "no job named frobnicate"
            }
        }
        a.close()
        b.close()
        server.cancel()
    }

    @Test("a request the peer drops ends with noReply, and one it ignores times out", arguments: PairKind.allCases)
    func noReplyAndTimeout(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        let held = NIOLockedValueBox<[Request]>([])
        let server = Task {
            let inbox = try #require(try await b.accept())
            while let request = try await inbox.nextRequest() {
                if request.body == "drop" { continue }  // the reply Sender is dropped here
                held.withLockedValue { $0.append(request) }
            }
        }
        try await withDeadline {
            let calls = try a.open()
            await #expect { try await calls.request("drop") } throws: { ($0 as? ChanError)?.code == .noReply }
            await #expect { try await calls.request("hold", timeout: .milliseconds(200)) } throws: { ($0 as? ChanError)?.code == .timeout }
        }
        a.close()
        b.close()
        server.cancel()
    }

    @Test("byte streams of several MiB arrive intact, both directions", .heavy, arguments: PairKind.allCases)
    func byteStreams(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        let size = 6 * 1024 * 1024 + 123
        let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try await withDeadline(60) {
            let control = try a.open()
            // a → b: we send the reader, keep the writer.
            let (writer, reader) = try a.makeByteStream()
            try await control.send(["stream": .channel(.byteStreamReader(reader))])
            let inbox = try #require(try await b.accept())
            let message = try #require(try await inbox.receive())
            guard case .channel(.byteStreamReader(let remoteReader))? = message["stream"] else {
                Issue.record("expected a ByteStreamReader")
                return
            }
            async let received = remoteReader.readAll()
            try await writer.write(payload)
            writer.close()
            let got = try await received
            #expect(got.count == payload.count)
            #expect(got == payload)

            // b → a: we send the writer, keep the reader.
            let (writer2, reader2) = try a.makeByteStream()
            try await control.send(["stream": .channel(.byteStreamWriter(writer2))])
            let message2 = try #require(try await inbox.receive())
            guard case .channel(.byteStreamWriter(let remoteWriter))? = message2["stream"] else {
                Issue.record("expected a ByteStreamWriter")
                return
            }
            async let back = reader2.readAll()
            try await remoteWriter.write(payload)
            remoteWriter.close()
            #expect(try await back == payload)
        }
        a.close()
        b.close()
    }

    @Test("a receiver that never reads bounds what the sender can push", arguments: PairKind.allCases)
    func flowControl(_ kind: PairKind) async throws {
        let window = 64 * 1024
        let (a, b) = try await kind.make(window: window)
        let stalled = AsyncStream<UInt64>.makeStream()
        a.creditStallObserver = { id in stalled.continuation.yield(id) }
        let sent = NIOLockedValueBox(0)
        let chunk = Value.binary([UInt8](repeating: 0xab, count: 1000))
        let sender = try a.open()
        let writer = Task {
            for _ in 0..<1000 {
                try await sender.send(chunk)
                sent.withLockedValue { $0 += 1 }
            }
        }
        let receiver = try #require(try await withDeadline { try await b.accept() })
        // Wait for the event itself: the sender parks for credit.
        let stalledID = try await withDeadline(30, "the sender to stall") {
            var it = stalled.stream.makeAsyncIterator()
            return await it.next()
        }
        #expect(stalledID == sender.id)
        let sentBeforeStall = sent.withLockedValue { $0 }
        let buffered = b.statistics.bufferedBytes
        // Each message costs about 1,006 bytes of credit: the 64 KiB window admits 66 of them.
        #expect((60...70).contains(sentBeforeStall), "\(sentBeforeStall) messages went out before the stall")
        #expect(buffered <= window + b.configuration.maxFrameSize)
        // Reading releases the sender, and everything arrives in order.
        try await withDeadline {
            var count = 0
            while count < 1000, let v = try await receiver.receive() {
                #expect(v == chunk)
                count += 1
            }
            #expect(count == 1000)
            try await writer.value
        }
        a.close()
        b.close()
    }

    @Test("when the peer goes away, pending receives and calls end at once with peerGone", arguments: PairKind.allCases)
    func peerDeath(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        let ready = AsyncStream<Void>.makeStream()
        let server = Task {
            let inbox = try #require(try await b.accept())
            var held: [Request] = []
            while let r = try await inbox.nextRequest() {
                held.append(r)
                if held.count == 3 { ready.continuation.yield() }
            }
        }
        let calls = try a.open()
        let pending = (0..<3).map { i in Task { try await calls.request(.int(Int64(i)), timeout: .seconds(60)) } }
        // A pipe whose Sender stays alive here, so its receiver can only end by the peer's death.
        let (idleSender, idle) = try a.makePipe()
        let idleReceive = Task { try await idle.receive() }
        var it = ready.stream.makeAsyncIterator()
        _ = await it.next()
        // The peer vanishes without a goodbye (as a crash would).
        b.transport.close()
        try await withDeadline(10, "pending calls to fail") {
            for call in pending {
                await #expect { try await call.value } throws: { ($0 as? ChanError)?.code == .peerGone }
            }
            await #expect { try await idleReceive.value } throws: { ($0 as? ChanError)?.code == .peerGone }
        }
        await #expect { try await calls.request("after") } throws: { ($0 as? ChanError)?.code == .peerGone }
        withExtendedLifetime(idleSender) {}
        server.cancel()
    }

    @Test("channel ends refuse misuse with a clear error")
    func misuse() async throws {
        let (a, b) = try await startedInMemoryPair()
        let (s, r) = try a.makePipe()
        await #expect { try await s.send(1) } throws: { ($0 as? ChanError)?.code == .notConnected }
        let control = try a.open()
        try await control.send(.channel(.receiver(r)))
        await #expect { try await control.send(.channel(.receiver(r))) } throws: { ($0 as? ChanError)?.code == .endMoved }
        await #expect { try await r.receive() } throws: { ($0 as? ChanError)?.code == .endMoved }
        let (otherSender, _) = try b.makePipe()
        await #expect { try await control.send(.channel(.sender(otherSender))) } throws: { ($0 as? ChanError)?.code == .wrongSession }
        a.close()
        b.close()
    }

    @Test("the handshake deadline is cancelled once the HELLO arrives (found by fuzzing)", arguments: PairKind.allCases)
    func handshakeTimerCancelled(_ kind: PairKind) async throws {
        let (a, b) = try await kind.make()
        #expect(a.state.withLockedValue { $0.handshakeTimer } == nil, "a finished handshake keeps no timer")
        #expect(b.state.withLockedValue { $0.handshakeTimer } == nil)
        a.close()
        b.close()
    }

    @Test("a session over pipes is freed once it has ended (found by fuzzing: each one leaked)")
    func endedSessionIsFreed() async throws {
        final class Weak: Sendable {
            weak let session: Session?
            init(_ session: Session) { self.session = session }
        }
        let weakA: Weak
        let weakB: Weak
        do {
            let (a, b) = try await startedPipePair()
            weakA = Weak(a)
            weakB = Weak(b)
            let calls = try a.open(label: "calls")
            let echo = serveEcho(b)
            // What is checked is the freeing, not the latency: a generous deadline, so that a
            // loaded machine (the whole suite on two busy cores) cannot fail it.
            #expect(try await calls.request("ping", timeout: .seconds(60)) == "ping")
            a.close()
            _ = await b.waitUntilClosed()
            _ = await a.waitUntilClosed()
            await echo.value
        }
        // Teardown finishes on the event loops: wait for it, with a deadline.
        try await withDeadline(30, "both sessions to be freed") {
            while weakA.session != nil || weakB.session != nil { await Task.yield() }
        }
    }

    @Test("the unix socket transport carries the same session")
    func unixSocket() async throws {
        let path = "/tmp/plugboard-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try await SessionListener.bind(unixSocketPath: path, configuration: .init(name: "server"), logger: quietLogger) { session in
            Task {
                try await session.start()
                _ = serveEcho(session)
            }
        }
        defer { unlink(path) }
        let client = try await Session.connect(unixSocketPath: path, configuration: .init(name: "client"), logger: quietLogger)
        try await withDeadline(120) {
            try await client.start()
            #expect(client.peer?.name == "server")
            let calls = try client.open()
            #expect(try await calls.request(["over": "unix"], timeout: .seconds(60)) == ["over": "unix"])
        }
        client.close()
        try await listener.close()
    }
}

@Suite("handshake deadlines")
struct HandshakeDeadlineTests {
    @Test("a peer that never sends HELLO fails start() with a timeout", arguments: PairKind.allCases)
    func silentPeer(_ kind: PairKind) async throws {
        switch kind {
        case .inMemory:
            let (a, b) = Session.inMemoryPair(.init(name: "a", handshakeTimeout: .milliseconds(300)), .init(name: "b"), logger: quietLogger)
            try await withDeadline(10) {
                await #expect { try await a.start() } throws: { ($0 as? ChanError)?.code == .timeout }
            }
            withExtendedLifetime(b) {}
        case .pipes:
            let raw = try await RawPeer.make(configuration: .init(name: "a", handshakeTimeout: .milliseconds(300)))
            try await withDeadline(10) {
                await #expect { try await raw.session.start() } throws: { ($0 as? ChanError)?.code == .timeout }
            }
            raw.closeAll()
        }
    }
}
