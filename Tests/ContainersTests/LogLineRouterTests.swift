import NIOConcurrencyHelpers
import Testing
@testable import Containers

@Suite("container output through a filter: lines, bounded, drops counted")
struct LogLineRouterTests {
    func text(_ log: ContainerLog, _ stream: ContainerLog.Stream) -> String {
        String(decoding: log.kept.filter { $0.stream == stream }.flatMap(\.bytes), as: UTF8.self)
    }

    @Test("output is cut into lines, each filtered; a last line without a newline keeps none")
    func lines() async {
        let log = ContainerLog()
        let router = LogLineRouter(id: "c1", log: log) { id, stream, line in
            line == "drop me" ? [] : ["\(id)/\(stream.rawValue): \(line.uppercased())"]
        }
        router.feed(.stdout, Array("one\ntw".utf8))
        router.feed(.stdout, Array("o\ndrop me\nthree".utf8))
        router.feed(.stderr, Array("err\n".utf8))
        await router.finish()
        #expect(text(log, .stdout) == "c1/stdout: ONE\nc1/stdout: TWO\nc1/stdout: THREE")
        #expect(text(log, .stderr) == "c1/stderr: ERR\n")
    }

    @Test("a slow filter holds at most the queue's capacity; the rest are dropped, counted, and recorded in the log")
    func boundedWithDrops() async throws {
        let log = ContainerLog()
        let entered = AsyncStream.makeStream(of: Void.self)
        let release = AsyncStream.makeStream(of: Void.self)
        let first = NIOLockedValueBox(true)
        let router = LogLineRouter(id: "c2", log: log) { _, _, line in
            if first.withLockedValue({ let was = $0; $0 = false; return was }) {
                entered.continuation.yield()
                for await _ in release.stream { break }
            }
            return [line]
        }
        router.feed(.stdout, Array("line 0\n".utf8))
        for await _ in entered.stream { break }  // the filter holds line 0
        let extra = LogLineRouter.capacity + 176
        router.feed(.stdout, Array((1...extra).map { "line \($0)\n" }.joined().utf8))
        release.continuation.yield()
        await router.finish()
        let out = text(log, .stdout).split(separator: "\n")
        #expect(out.count == 1 + LogLineRouter.capacity, "line 0 and a full queue arrive")
        #expect(out.first == "line 0" && out.last == "line \(LogLineRouter.capacity)")
        #expect(text(log, .stderr) == "[plugboard: 176 lines dropped: the log pipeline fell behind]\n")
    }

    @Test("a line longer than the maximum is passed in pieces")
    func longLine() async {
        let log = ContainerLog()
        let router = LogLineRouter(id: "c3", log: log) { _, _, line in ["\(line.count)"] }
        router.feed(.stdout, [UInt8](repeating: 0x61, count: LogLineRouter.maxLine * 2 + 5) + [10])
        await router.finish()
        #expect(text(log, .stdout) == "\(LogLineRouter.maxLine)\n\(LogLineRouter.maxLine)\n5\n")
    }
}

@Suite("a container's kept output")
struct ContainerLogKeepingTests {
    @Test("a quarter of a million one-byte writes keep the last 64 KiB in a few chunks, in order")
    func byteAtATime() {
        let limit = 64 << 10
        let log = ContainerLog(keeping: limit)
        let total = 250_000
        for i in 0..<total { log.append(.stdout, [UInt8(truncatingIfNeeded: i % 251)]) }
        let kept = log.kept
        let bytes = kept.flatMap(\.bytes)
        // Small writes are kept together: the structure is bounded by size, not by writes.
        #expect(kept.count <= limit / ContainerLog.coalesceBelow + 2, "\(kept.count) chunks")
        #expect(bytes.count <= limit && bytes.count > limit - ContainerLog.coalesceBelow)
        // The newest bytes, in the order written.
        let first = total - bytes.count
        #expect(bytes.enumerated().allSatisfy { $0.element == UInt8(truncatingIfNeeded: (first + $0.offset) % 251) })
    }

    @Test("writes to stdout and stderr are not merged into one another")
    func streamsApart() {
        let log = ContainerLog()
        log.append(.stdout, Array("a".utf8))
        log.append(.stdout, Array("b".utf8))
        log.append(.stderr, Array("c".utf8))
        log.append(.stdout, Array("d".utf8))
        #expect(log.kept.map { "\($0.stream.rawValue):\(String(decoding: $0.bytes, as: UTF8.self))" } == ["stdout:ab", "stderr:c", "stdout:d"])
    }
}
