#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import StateService
import Testing
import TestSupport

@Suite("state is bounded: value sizes, and replies that could not fit a frame", .serialized)
struct StateBoundsTests {
    let place = DaemonPlace("state-bounds")
    var socket: String { place.socket }

    /// Whether `error` is the peer's `code` and its message contains `text`.
    static func failed(_ error: any Error, _ code: String, _ text: String) -> Bool {
        guard let e = error as? ChanError else { return false }
        return e.remoteCode == code && e.reason.contains(text)
    }

    @Test("12 MiB values are refused as too large, from the admin socket and from a plugin; plugboardd stays small", .heavy)
    func largeValuesRefused() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin-exec", "p=\(plugin)"])
        try await whileRunning(daemon) {
            let pid = daemon.process.pid
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            for i in 0..<20 { _ = try await adminCall(admin, "echo", .int(Int64(i))) }
            let baseline = residentBytes(pid)
            // The attack: three values of 12 MiB.
            for i in 0..<3 {
                await #expect {
                    _ = try await adminCall(admin, "state.put", .fields(("namespace", "big"), ("key", .string("k\(i)")), ("value", .binary([UInt8](repeating: 0x63, count: 12 << 20)))))
                } throws: { Self.failed($0, "state.too-large", "a state value is at most 262144 bytes") }
            }
            let after = residentBytes(pid)
            // The limit, exactly: a binary of N bytes encodes in N + 5.
            let limit = StateStore.maximumValueBytes
            #expect(try await adminCall(admin, "state.put", .fields(("namespace", "big"), ("key", "edge"), ("value", .binary([UInt8](repeating: 1, count: limit - 5)))))["version"] == 1)
            await #expect {
                _ = try await adminCall(admin, "state.put", .fields(("namespace", "big"), ("key", "edge"), ("value", .binary([UInt8](repeating: 1, count: limit - 4)))))
            } throws: { Self.failed($0, "state.too-large", "\(limit - 4 + 5) bytes") }
            #expect(try await adminCall(admin, "state.list", .fields(("namespace", "big"))).arrayValue?.map { $0["key"] } == ["edge"])
            // A plugin gets the same answer, with the same code.
            let probe = try await adminCall(admin, "p.probe", .fields(("job", "state.put"), ("argument", .fields(("key", "k"), ("value", .binary([UInt8](repeating: 2, count: 512 * 1024)))))))
            #expect(probe["code"] == "state.too-large", "\(probe)")
            if ProcessInfo.processInfo.environment["PLUGBOARD_SANITIZER"] == nil {
                // Each request is decoded (12 MiB) and measured, then dropped: no value is kept.
                #expect(after - baseline < 96 << 20, "plugboardd grew by \((after - baseline) >> 20) MiB")
            }
            print("large state values: RSS baseline \(baseline >> 20) MiB, after three 12 MiB puts \(after >> 20) MiB")
        }
        await place.stop(daemon)
    }

    @Test("a state.list whose reply would not fit fails saying so, to an operator and to a plugin; limit and after page through everything")
    func listThatCannotFit() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin-exec", "p=\(plugin)"])
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            // Ten values of 200 KB in p's namespace: 2 MB in all, more than any reply carries.
            let value = Value.binary([UInt8](repeating: 0x64, count: 200_000))
            for i in 0..<10 {
                _ = try await adminCall(admin, "state.put", .fields(("namespace", "p"), ("key", .string("k\(i)")), ("value", value)))
            }
            await #expect {
                _ = try await adminCall(admin, "state.list", .fields(("namespace", "p")))
            } throws: { Self.failed($0, "state.reply-too-large", "only the first 5 of the entries asked for fit in a reply") && "\($0)".contains("\"after\": \"k4\"") }
            // The plugin that owns the namespace hears the same, instead of no reply at all.
            let probe = try await adminCall(admin, "p.probe", .fields(("job", "state.list"), ("argument", .fields())))
            #expect(probe["code"] == "state.reply-too-large", "\(probe)")
            #expect(probe["message"]?.stringValue?.contains("\"limit\": 5") == true, "\(probe)")
            // Paging as the message says gets every entry, once, in order.
            var keys: [String] = []
            var after: Value = .nil
            while true {
                let page = try await adminCall(admin, "state.list", .fields(("namespace", "p"), ("limit", 5), ("after", after)))
                let got = page.arrayValue?.compactMap { $0["key"]?.stringValue } ?? []
                if got.isEmpty { break }
                keys += got
                after = .string(got[got.count - 1])
            }
            #expect(keys == (0..<10).map { "k\($0)" })
            // And the session is still there: it was an answer, not a broken channel.
            #expect(try await adminCall(admin, "echo", "still here") == "still here")
        }
        await place.stop(daemon)
    }
}
