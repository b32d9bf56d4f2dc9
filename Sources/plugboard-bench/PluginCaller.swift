import ArgumentParser
import Chan
import Logging
import PluginKit

/// `plugboard-bench plugin-caller`: an exec plugin whose job `bench.call-loop` calls a job
/// through the engine one call at a time and answers with the latencies it measured, for
/// `daemon.call.from_plugin` (plugin → plugboardd → plugin, the path a plugin's
/// `ctx.engine.call` takes).
struct PluginCaller: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plugin-caller", abstract: "Internal: the calling plugin of daemon.call.from_plugin.", shouldDisplay: false)

    func run() async throws {
        await PluginKit.serve(CallLoopPlugin(), logger: Logger(label: "plugin-caller", factory: { _ in SwiftLogNoOpLogHandler() }))
    }
}

/// Declares `bench.call-loop {"job": NAME, "calls": N, "warmup": W}`: W untimed calls of
/// NAME with the argument "ping", then N timed ones; answers `{p50_us, p99_us, calls_per_s}`.
struct CallLoopPlugin: Plugin {
    static let job = "bench.call-loop"

    func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "bench-caller", version: "1.0.0")
        d.calls = ["echo"]
        let engine = context.engine
        d.job(Self.job, timeout: .seconds(3600)) { argument in
            guard let engine else { throw ChanError(.notConnected, "not connected to the engine") }
            let job = argument["job"]?.stringValue ?? "echo"
            let calls = max(1, Int(argument["calls"]?.intValue ?? 1000))
            let warmup = max(0, Int(argument["warmup"]?.intValue ?? 0))
            for _ in 0..<warmup { _ = try await engine.call(job, "ping", timeout: .seconds(10)) }
            let (samples, start, end) = try await timeSequentially(calls) { _ = try await engine.call(job, "ping", timeout: .seconds(10)) }
            let elapsed = Double(end - start) / 1e9
            return .fields(
                ("p50_us", .float(samples.percentile(0.5))),
                ("p99_us", .float(samples.percentile(0.99))),
                ("calls_per_s", .float(Double(calls) / elapsed))
            )
        }
        return d
    }
}
