#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import Spawn
import Testing
import TestSupport
@testable import Chan

/// The same session code against a real child process with real pipes on its fds 3 and 4.
@Suite("a real child on fds 3/4", .serialized)
struct ChildProcessTests {
    @Test("request/reply with a child, one call and a thousand concurrent")
    func echo() async throws {
        let peer = try await PeerProcess.start()
        #expect(peer.session.peer?.name == "test-peer")
        try await withDeadline(60) {
            let calls = try peer.session.open(label: "calls")
            #expect(try await calls.request(["op": "echo", "value": "hi"]) == "hi")
            let results = try await withThrowingTaskGroup(of: Value.self) { group in
                for i in 0..<1000 { group.addTask { try await calls.request(["op": "echo", "value": .int(Int64(i))]) } }
                var all: [Value] = []
                for try await r in group { all.append(r) }
                return all
            }
            #expect(Set(results) == Set((0..<1000).map { Value.int(Int64($0)) }))
            await #expect { try await calls.request(["op": "fail"]) } throws: { ($0 as? ChanError)?.remoteCode == "test.failure" }
        }
        await peer.stop()
        #expect(peer.process.exitStatus != nil)
    }

    @Test("the child opens a channel to us, and reads a Receiver we send it")
    func bothDirections() async throws {
        let peer = try await PeerProcess.start()
        try await withDeadline(60) {
            let calls = try peer.session.open()
            #expect(try await calls.request(["op": "open"]) == "opened")
            let fromPeer = try #require(try await peer.session.accept())
            #expect(fromPeer.label == "from-peer")
            var got: [Value] = []
            for try await v in fromPeer { got.append(v) }
            #expect(got == [1, 2, 3])

            let (sender, receiver) = try peer.session.makePipe()
            let drained = try await calls.startRequest(["op": "drain", "receiver": .channel(.receiver(receiver))])
            for i in 0..<100 { try await sender.send(.int(Int64(i))) }
            sender.close()
            #expect(try await drained.reply() == .array((0..<100).map { .int(Int64($0)) }))
        }
        await peer.stop()
    }

    @Test("byte streams of several MiB to and from the child", .heavy)
    func streams() async throws {
        let peer = try await PeerProcess.start()
        let size = 8 * 1024 * 1024
        try await withDeadline(90) {
            let calls = try peer.session.open()
            // Generous deadlines: under the sanitizers 8 MiB through msgpack takes a while.
            let reply = try await calls.request(["op": "stream", "bytes": .int(Int64(size))], timeout: .seconds(60))
            guard case .channel(.byteStreamReader(let reader))? = reply["stream"] else {
                Issue.record("expected a stream, got \(reply)")
                return
            }
            let bytes = try await reader.readAll()
            #expect(bytes.count == size)
            #expect(bytes.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: $0.offset) })

            let (writer, upload) = try peer.session.makeByteStream()
            async let summary = calls.request(["op": "upload", "stream": .channel(.byteStreamReader(upload))], timeout: .seconds(60))
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 % 251) }
            try await writer.write(payload)
            writer.close()
            let result = try await summary
            #expect(result["count"] == .int(Int64(size)))
            #expect(result["sum"] == .int(Int64(payload.reduce(UInt64(0)) { $0 + UInt64($1) })))
        }
        await peer.stop()
    }

    @Test("a child that never reads stalls our sender instead of growing our memory")
    func flowControlAcrossProcesses() async throws {
        let peer = try await PeerProcess.start()
        let stalled = AsyncStream<UInt64>.makeStream()
        peer.session.creditStallObserver = { stalled.continuation.yield($0) }
        try await withDeadline(60) {
            let calls = try peer.session.open()
            let (sender, receiver) = try peer.session.makePipe()
            #expect(try await calls.request(["op": "hold", "receiver": .channel(.receiver(receiver))]) == "held")
            let writer = Task {
                for _ in 0..<10_000 { try await sender.send(.binary([UInt8](repeating: 1, count: 4096))) }
            }
            var it = stalled.stream.makeAsyncIterator()
            #expect(await it.next() == sender.id)
            let out = peer.session.statistics.bytesOut
            #expect(out < 2 * 1024 * 1024, "a 40 MiB backlog must not leave this process: \(out) bytes went out")
            writer.cancel()
            await #expect(throws: CancellationError.self) { try await writer.value }
        }
        await peer.stop()
    }

    @Test("a child that crashes mid-call fails every in-flight call at once")
    func crashMidCall() async throws {
        let peer = try await PeerProcess.start()
        let calls = try peer.session.open()
        // Calls that the child holds open, then one that makes it exit.
        let hanging = (0..<5).map { _ in Task { try await calls.request(["op": "hang"], timeout: .seconds(120)) } }
        #expect(try await calls.request(["op": "echo", "value": 1]) == 1)
        let crash = Task { try await calls.request(["op": "crash"], timeout: .seconds(120)) }
        try await withDeadline(20, "in-flight calls to fail after the crash") {
            await #expect { try await crash.value } throws: { ($0 as? ChanError)?.code == .peerGone }
            for call in hanging {
                await #expect { try await call.value } throws: { ($0 as? ChanError)?.code == .peerGone }
            }
        }
        #expect(await peer.process.waitForExit() == .exited(3))
    }

    @Test("a child that writes garbage is cut off with a protocol error, and pending calls end")
    func garbage() async throws {
        let peer = try await PeerProcess.start()
        let calls = try peer.session.open()
        let hanging = Task { try await calls.request(["op": "hang"], timeout: .seconds(120)) }
        try await withDeadline(20) {
            await #expect { try await calls.request(["op": "garbage"]) } throws: { ($0 as? ChanError)?.code == .protocolViolation }
            let reason = await peer.session.waitUntilClosed()
            #expect(reason.code == .protocolViolation)
            #expect(reason.reason.contains("malformed frame"))
            await #expect { try await hanging.value } throws: { ($0 as? ChanError)?.code == .protocolViolation }
        }
        _ = await peer.process.waitForExit()
    }
}
