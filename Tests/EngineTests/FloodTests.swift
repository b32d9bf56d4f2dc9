#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// A process's resident memory in bytes, from /proc.
func residentBytes(_ pid: pid_t) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return 0 }
    return kb * 1024
}

@Suite("floods: a plugin sending as fast as it can, or maximum-size frames back to back", .serialized, .heavy)
struct FloodTests {
    /// plugboardd's memory may grow by at most this much under a flood (docs/RELIABILITY.md):
    /// 32 engine calls in flight per plugin × (a 1 MiB frame, its decoded value and its
    /// reply), plus the channels' windows.
    static let boundBytes = 192 << 20

    let dir = "/tmp/plugboard-flood-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    @Test("plugboardd's memory stays bounded and other callers keep being served")
    func floods() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let plugin = try builtExecutable("plugboard-test-plugin")
        let socket = dir + "/admin.sock"
        let daemon = try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", ["--plugin", "echo", "--plugin-exec", "flooder=\(plugin) calls=echo"])
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(socket)
            defer { session.close(reason: "done") }
            for i in 0..<50 { _ = try await adminCall(admin, "echo", .int(Int64(i))) }
            let baseline = residentBytes(daemon.process.pid)

            for (what, argument) in [
                ("maximum-size frames back to back", Value.fields(("job", "echo"), ("size", .int(Int64(1 << 20) - 256)), ("count", 300))),
                ("small frames as fast as it can", Value.fields(("job", "echo"), ("argument", "x"), ("count", 20000))),
            ] {
                let (floodSession, floodAdmin) = try await adminSession(socket)
                let flood = Task {
                    defer { floodSession.close(reason: "done") }
                    return try await floodAdmin.request(.fields(("command", "call"), ("job", "flooder.flood"), ("argument", argument), ("timeout_ms", 300_000)), timeout: .seconds(310))
                }
                // Meanwhile another caller is served, and the daemon's memory is read after each call.
                var peak = baseline
                var served = 0
                for i in 0..<200 {
                    if try await adminCall(admin, "echo", .int(Int64(i))) == .int(Int64(i)) { served += 1 }
                    peak = max(peak, residentBytes(daemon.process.pid))
                }
                let result = try await withDeadline(300, "the flood (\(what)) to end") { try await flood.value }
                peak = max(peak, residentBytes(daemon.process.pid))
                let count = argument["count"]?.intValue ?? 0
                #expect(result["ok"]?.intValue == count, "\(what): every flooded call was served in the end: \(result)")
                #expect(served == 200, "\(what): the other caller was served throughout")
                // Under AddressSanitizer (make sanitize) every allocation carries redzones and
                // freed memory sits in quarantine: resident size says nothing about the bound.
                if ProcessInfo.processInfo.environment["PLUGBOARD_SANITIZER"] == nil {
                    #expect(peak - baseline < Self.boundBytes, "\(what): plugboardd grew by \((peak - baseline) >> 20) MiB (bound \(Self.boundBytes >> 20) MiB)")
                }
                print("flood \(what): baseline \(baseline >> 20) MiB, peak \(peak >> 20) MiB")
            }
        }
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
    }
}
