#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Testing
import TestSupport

/// `body`'s result or its error, within a deadline.
func withDeadlineResult<T: Sendable>(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await withDeadline(seconds, what, body)) } catch { return .failure(error) }
}

/// A hostile plugin's session costs plugboardd a bounded amount: the attacks of issue 15
/// ("Memory: bounded per plugin") against a real daemon, played by `plugboard-test-peer
/// open-flood` as an exec plugin. (Each daemon here gets its own --admin-socket and
/// --state-dir from `DaemonPlace`.)
@Suite("session memory bounds: a plugin opening channels without end, or sending frames that decode huge, against a real daemon", .serialized)
struct SessionBoundsDaemonTests {
    /// How much plugboardd may grow under each attack here (docs/RELIABILITY.md, "Session
    /// memory bounds"): generous against what is left when the bounds hold (a few MiB),
    /// far under what the attacks cost without them (~4 KiB per channel: 200 MiB for 50,000;
    /// ~41 MiB per frame of a million nils).
    static let boundBytes = 64 << 20

    /// Whether resident size means anything (under AddressSanitizer it does not).
    var measuresMemory: Bool { ProcessInfo.processInfo.environment["PLUGBOARD_SANITIZER"] == nil }

    @Test("the channel cap is settable per plugin: plugin set NAME channels=N applies from its next start")
    func channelCapPerPlugin() async throws {
        let place = DaemonPlace("channel-cap")
        let daemon = try await place.startDaemon(["--plugin-exec", "flooder=\(try builtExecutable("plugboard-test-peer")) open-flood"])
        try await whileRunning(daemon) {
            #expect(try await place.cli(["plugin", "set", "flooder", "channels=100"]).status == .exited(0))
            let bad = try await place.cli(["plugin", "set", "flooder", "channels=0"])
            #expect(bad.status != .exited(0) && bad.err.contains("channels is a count"), "\(bad.err)")
            #expect(try await place.cli(["plugin", "restart", "flooder"]).status == .exited(0))
            let (session, admin) = try await adminSession(place.socket)
            defer { session.close(reason: "done") }
            let report = try await admin.request(.fields(
                ("command", "call"), ("job", "flooder.open-flood"), ("argument", .fields(("count", 500))), ("timeout_ms", 60_000)
            ), timeout: .seconds(70))
            #expect(report["accepted"] == 100, "\(report)")
            #expect(report["reasons"] == ["too many open channels: limit 100"], "\(report)")
        }
        await place.stop(daemon)
    }

    @Test("a plugin that opens 50,000 channels gets a RESET for each past 1024; the daemon answers calls and stays small", .heavy)
    func openFlood() async throws {
        let place = DaemonPlace("open-flood")
        let daemon = try await place.startDaemon(["--plugin-exec", "flooder=\(try builtExecutable("plugboard-test-peer")) open-flood"])
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(place.socket)
            defer { session.close(reason: "done") }
            for i in 0..<20 { _ = try await adminCall(admin, "echo", .int(Int64(i))) }
            let baseline = residentBytes(daemon.process.pid)

            let count = 50_000
            let report = try await withDeadline(120, "the open flood") {
                try await admin.request(.fields(
                    ("command", "call"), ("job", "flooder.open-flood"), ("argument", .fields(("count", .int(Int64(count))))), ("timeout_ms", 100_000)
                ), timeout: .seconds(110))
            }
            let grown = residentBytes(daemon.process.pid) - baseline
            #expect(report["opened"] == .int(Int64(count)))
            #expect(report["accepted"] == .int(Int64(Session.Configuration.defaultMaxChannelsOpenedByPeer)), "\(report)")
            #expect(report["refused"] == .int(Int64(count - Session.Configuration.defaultMaxChannelsOpenedByPeer)), "\(report)")
            #expect(report["reasons"] == ["too many open channels: limit 1024"], "\(report)")
            // The session stayed up: a kept channel answered during the flood, a fresh one after it.
            #expect(report["during"] == "during the flood")
            #expect(report["after"] == "after the flood")
            // The daemon answers other callers, and said what it refused.
            #expect(try await adminCall(admin, "echo", "still here") == "still here")
            #expect(daemon.log.all.contains { $0.contains("OPEN refused") && $0.contains("flooder") }, "\(daemon.log.all.suffix(5))")
            if measuresMemory {
                #expect(grown < Self.boundBytes, "plugboardd grew by \(grown >> 20) MiB (bound \(Self.boundBytes >> 20) MiB)")
            }
            print("open flood of \(count) channels: plugboardd grew by \(grown >> 10) KiB")
        }
        await place.stop(daemon)
    }

    @Test("a plugin sending 40 requests of a million nils (1 MiB each) loses its session at the first; the daemon stays small")
    func nilBomb() async throws {
        let place = DaemonPlace("nil-bomb")
        let daemon = try await place.startDaemon(["--plugin-exec", "flooder=\(try builtExecutable("plugboard-test-peer")) open-flood"])
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(place.socket)
            defer { session.close(reason: "done") }
            for i in 0..<20 { _ = try await adminCall(admin, "echo", .int(Int64(i))) }
            let baseline = residentBytes(daemon.process.pid)

            // The plugin's session ends at its first bomb, so the call fails: that is the point.
            // Meanwhile the daemon's memory is sampled, as another caller is served.
            let bomb = Task {
                try await admin.request(.fields(
                    ("command", "call"), ("job", "flooder.nil-bomb"), ("argument", .fields(("count", 40), ("nils", 1_000_000))), ("timeout_ms", 100_000)
                ), timeout: .seconds(110))
            }
            let (otherSession, other) = try await adminSession(place.socket)
            defer { otherSession.close(reason: "done") }
            var peak = baseline
            var served = 0
            for i in 0..<50 {
                if try await adminCall(other, "echo", .int(Int64(i))) == .int(Int64(i)) { served += 1 }
                peak = max(peak, residentBytes(daemon.process.pid))
            }
            let outcome = await withDeadlineResult(120, "the nil bomb's call to end") { try await bomb.value }
            print("nil bomb: the call ended with \(outcome)")
            peak = max(peak, residentBytes(daemon.process.pid))
            let grown = peak - baseline
            #expect(served == 50, "the other caller was served throughout")
            if measuresMemory {
                #expect(grown < Self.boundBytes, "plugboardd grew by \(grown >> 20) MiB (bound \(Self.boundBytes >> 20) MiB)")
            }
            print("nil bomb: plugboardd's peak was \(grown >> 10) KiB over its baseline")
            let refused = try await withDeadline(30, "the daemon's word on the frame") { await daemon.log.waitFor("too many values") }
            #expect(refused?.contains("limit \(DecodingLimits.defaultMaxValues)") == true, "\(refused ?? "no line")")
            #expect(try await adminCall(admin, "echo", "still here") == "still here")
        }
        await place.stop(daemon)
    }
}
