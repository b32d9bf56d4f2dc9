#if canImport(Glibc)
import Glibc
#endif
import Chan
import Engine
import Foundation
import NIOConcurrencyHelpers
import Spawn
import Testing
import TestSupport

/// Samples a process's resident memory until stopped; the peak.
final class RSSSampler: Sendable {
    private let peak = NIOLockedValueBox(0)
    private let stopped = NIOLockedValueBox(false)

    /// Samples `pid` every 20 ms until ``stop()``. Run it in a task the test owns.
    func run(_ pid: pid_t) async {
        while !stopped.withLockedValue({ $0 }) {
            let now = residentBytes(pid)
            peak.withLockedValue { $0 = max($0, now) }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    func stop() -> Int {
        stopped.withLockedValue { $0 = true }
        return peak.withLockedValue { $0 }
    }
}

/// Runs `plugin.flood` (the test plugin's: `count` engine calls of `job` with `argument`, all
/// at once) through the admin socket, with room for a slow machine.
func flood(_ admin: Sender, plugin: String, job: String, argument: Value, count: Int) async throws -> Value {
    try await admin.request(.fields(
        ("command", "call"), ("job", .string(plugin + ".flood")), ("timeout_ms", 300_000),
        ("argument", .fields(("job", .string(job)), ("argument", argument), ("count", .int(Int64(count))))),
    ), timeout: .seconds(310))
}

@Suite("events are bounded: an event's size, and each subscriber's buffered bytes", .serialized)
struct EventBoundsTests {
    let place = DaemonPlace("event-bounds")
    var socket: String { place.socket }

    @Test("a plugin publishing 2,000 events of 512 KiB: each is refused as too large, and plugboardd stays small", .heavy)
    func oversizedEventsRefused() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin-exec", "p=\(plugin)"])
        try await whileRunning(daemon) {
            let pid = daemon.process.pid
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            // A subscriber that never reads, with the largest buffer it may ask for.
            let (sink, unread) = try session.makePipe()
            defer { withExtendedLifetime(unread) {} }
            #expect(try await adminCall(admin, "events.subscribe", .fields(("sink", .channel(.sender(sink))), ("types", ["test.*"]), ("buffer", 65536))) == "subscribed")
            // An operator's oversized event is refused too, saying why.
            await #expect {
                _ = try await adminCall(admin, "events.publish", .fields(("type", "test.big"), ("attributes", .fields(("pad", .string(String(repeating: "x", count: 100_000)))))))
            } throws: { error in
                let e = error as? ChanError
                return e?.remoteCode == "events.too-large" && e?.reason.contains("over the limit of 65536 bytes") == true
            }
            for i in 0..<20 { _ = try await adminCall(admin, "echo", .int(Int64(i))) }
            let baseline = residentBytes(pid)
            let sampler = RSSSampler()
            let sampling = Task { await sampler.run(pid) }

            let pad = Value.binary([UInt8](repeating: 0x61, count: 512 * 1024))
            let result = try await flood(admin, plugin: "p", job: "events.publish", argument: .fields(("type", "test.big"), ("attributes", .fields(("pad", pad)))), count: 2000)
            let peak = sampler.stop()
            await sampling.value
            #expect(result["ok"] == 0 && result["failed"] == 2000, "\(result)")
            #expect(result["first_error"]?.stringValue?.contains("over the limit of 65536 bytes") == true, "\(result)")
            let after = residentBytes(pid)
            if ProcessInfo.processInfo.environment["PLUGBOARD_SANITIZER"] == nil {
                // The flood's own bound (32 calls in flight, docs/RELIABILITY.md), not 1 GiB.
                #expect(peak - baseline < 192 << 20, "plugboardd grew by \((peak - baseline) >> 20) MiB")
            }
            print("oversized events: RSS baseline \(baseline >> 20) MiB, peak \(peak >> 20) MiB, after \(after >> 20) MiB")
        }
        await place.stop(daemon)
    }

    @Test("a subscriber that never reads holds at most 1 MiB of events; the rest are counted lost, exactly")
    func subscriberBufferBytesBounded() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin-exec", "p=\(plugin)"])
        try await whileRunning(daemon) {
            let pid = daemon.process.pid
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            // Through the admin socket's `events` command, as `plugboard events` subscribes.
            let (sink, events) = try session.makePipe()
            _ = try await admin.request(.fields(("command", "events"), ("sink", .channel(.sender(sink))), ("types", ["test.*"]), ("buffer", 65536)), timeout: .seconds(10))
            for i in 0..<20 { _ = try await adminCall(admin, "echo", .int(Int64(i))) }
            let baseline = residentBytes(pid)

            // 2,000 events of 60 KB each (under the 64 KiB limit): 120 MB if all were kept.
            let total = 2000
            let pad = Value.binary([UInt8](repeating: 0x62, count: 60_000))
            let result = try await flood(admin, plugin: "p", job: "events.publish", argument: .fields(("type", "test.mid"), ("attributes", .fields(("pad", pad)))), count: total)
            #expect(result["ok"]?.intValue == Int64(total), "\(result)")
            let grown = residentBytes(pid) - baseline
            let samples = try parseExposition(try await adminCall(admin, "metrics.scrape", .nil).stringValue ?? "")
            let buffered = try #require(samples["plugboard_event_buffered_bytes"])
            #expect(buffered <= Double(EventBus.maximumBufferedBytes), "buffered \(buffered) bytes")
            if ProcessInfo.processInfo.environment["PLUGBOARD_SANITIZER"] == nil {
                #expect(grown < 64 << 20, "plugboardd grew by \(grown >> 20) MiB")
            }

            // Now it reads: what it got and what it lost add up to every event, in order.
            let (delivered, lost) = try await withDeadline(60, "the subscriber's records") { () -> ([UInt64], Int) in
                var delivered: [UInt64] = []
                var lost = 0
                while delivered.count + lost < total, let record = try await events.receive() {
                    if record["type"] == "events.lost" { lost += Int(record["count"]?.intValue ?? 0) } else { delivered.append(record["seq"]?.uintValue ?? 0) }
                }
                return (delivered, lost)
            }
            #expect(delivered.count + lost == total)
            #expect(lost > 0)
            // At most the buffer's 1 MiB, the channel's 256 KiB window and one in the pump.
            #expect(delivered.count <= (EventBus.maximumBufferedBytes + 256 * 1024) / 60_000 + 2, "delivered \(delivered.count)")
            #expect(delivered == delivered.sorted())
            print("slow subscriber: RSS baseline \(baseline >> 20) MiB, +\(grown >> 20) MiB after 2000 × 60 KB; buffered \(Int(buffered)) bytes; delivered \(delivered.count), lost \(lost)")
        }
        await place.stop(daemon)
    }

    @Test("in process: buffered bytes are counted exactly; an engine event over the limit is trimmed, not dropped")
    func busAccounting() async throws {
        let bus = EventBus()
        let subscription = bus.subscribe(EventFilter(types: ["t"]), capacity: 10_000)
        defer { subscription.cancel() }
        let attribute = ("pad", Value.binary([UInt8](repeating: 1, count: 30_000)))
        let size = EventBus.encodedSize("t", [attribute])
        for _ in 0..<100 { bus.publish("t", [attribute]) }
        let fits = EventBus.maximumBufferedBytes / size
        #expect(bus.bufferedBytes == fits * size)
        var delivered = 0
        var lost = 0
        while delivered + lost < 100, let record = await subscription.next() {
            switch record {
            case .event: delivered += 1
            case .lost(let n): lost += n
            }
        }
        #expect(delivered == fits && lost == 100 - fits)
        #expect(bus.bufferedBytes == 0)

        // Over the limit: refused for a publisher, trimmed for the engine.
        let huge: [(String, Value)] = [("plugin", "p"), ("jobs", .array((0..<10_000).map { .string("job-\($0)") }))]
        #expect(throws: EventTooLarge.self) { try bus.publishOrRefuse("t", huge) }
        bus.publish("t", huge)
        guard case .event(let trimmed)? = await subscription.next() else {
            Issue.record("no event")
            return
        }
        #expect(trimmed["plugin"] == "p" && trimmed["jobs"] == nil)
        #expect((trimmed["truncated"]?.intValue ?? 0) > Int64(EventBus.maximumEventBytes))
    }
}
