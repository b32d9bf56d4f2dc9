#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// Ranked providers under a real daemon: two plugins provide one extension point; the CLI
/// and a plugin ask for the best or for all, in rank order, with failover.
@Suite("extension points: --best, --all, ranks and failover", .serialized)
struct ProviderDaemonTests {
    let place = DaemonPlace("providers")

    @Test("endpoints ranks the providers; --best asks the best, --all all in rank order; a plugin calls the best; the next takes over when the best goes")
    func ranked() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon([
            "--plugin-exec", "low=\(plugin) point=greet:10",
            "--plugin-exec", "high=\(plugin) point=greet:20",
            "--plugin-exec", "caller=\(plugin) calls=greet",
        ])
        try await whileRunning(daemon) {
            let endpoints = try await place.cli(["endpoints", "--format", "json"])
            let rows = try JSONDecoder().decode(Value.self, from: Data(endpoints.out.utf8)).arrayValue ?? []
            let greet = rows.filter { $0["job"] == "greet" }
            #expect(greet.map { "\($0["owner"]?.stringValue ?? "") \($0["rank"]?.intValue ?? 0) \($0["priority"]?.intValue ?? 0)" } == ["high 1 20", "low 2 10"], "\(endpoints.out)")
            #expect(try await place.cli(["endpoints"]).out.contains("provider"))

            let best = try await place.cli(["call", "--best", "greet", #""x""#])
            #expect(best.status == .exited(0) && best.out.contains(#""high:x""#), "\(best)")
            let all = try await place.cli(["call", "--all", "greet", #""y""#])
            let answers = try JSONDecoder().decode(Value.self, from: Data(all.out.utf8)).arrayValue ?? []
            #expect(answers.map { $0["ok"]?.stringValue ?? "" } == ["high:y", "low:y"], "\(all.out)")

            let fromPlugin = try await place.cli(["call", "caller.best", #"{"point": "greet", "argument": "z"}"#])
            #expect(fromPlugin.out.contains(#""high:z""#), "\(fromPlugin)")

            // The best goes: the next best answers.
            #expect(try await place.cli(["plugin", "disable", "high"]).status == .exited(0))
            let failover = try await place.cli(["call", "--best", "greet", #""w""#])
            #expect(failover.out.contains(#""low:w""#), "\(failover)")
            #expect(try await place.cli(["plugin", "disable", "low"]).status == .exited(0))
            let none = try await place.cli(["call", "--best", "greet", "1"])
            #expect(none.status != .exited(0) && none.err.contains("nobody provides greet"), "\(none.err)")
        }
        await place.stop(daemon)
    }
}
