import Foundation
import Spawn
import Testing
import TestSupport

/// `make fuzz` runs libFuzzer; here every seed and every crasher it ever found (kept under
/// Fuzz/crashers/TARGET once fixed) is replayed through the same targets on each test run.
@Suite("fuzz corpus and crashers replay without a crash")
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    @Test("replay", arguments: ["msgpack", "frames", "session", "admin"])
    func replay(target: String) async throws {
        var inputs = [Self.root + "/Fuzz/corpus/" + target]
        let crashers = Self.root + "/Fuzz/crashers/" + target
        if FileManager.default.fileExists(atPath: crashers) { inputs.append(crashers) }
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboard-fuzz"), arguments: ["replay", target] + inputs, environment: childEnvironment(["PATH": "/usr/bin:/bin"])
        ))
        let status = try await withDeadline(120, "replaying the \(target) corpus") { await process.waitForExit() }
        #expect(status == .exited(0), "plugboard-fuzz replay \(target) \(status)")
    }
}
