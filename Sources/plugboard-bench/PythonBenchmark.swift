#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Engine
import Foundation
import Logging

/// `plugboard-bench python`: an echo plugin on the Python SDK (sdk/python) beside the
/// PluginKit one, both exec plugins of an Engine in this process.
struct PythonBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "python",
        abstract: "Calls to an echo plugin on the Python SDK beside the PluginKit echo plugin: sequential and 64 in flight.",
        discussion: """
            Scenarios (an Engine in this process; each plugin an exec plugin on fds 3/4):
              pluginkit.echo.sequential     plugboard-plugin-echo, one call at a time
              pluginkit.echo.inflight64     the same, 64 calls in flight
              python.echo.sequential        an `async def` echo job on the Python SDK
              python.echo.inflight64        the same, 64 calls in flight
              python.echo_sync.sequential   a plain `def` echo job (run in the SDK's worker threads)
              python.echo_sync.inflight64   the same, 64 calls in flight
            The in-flight lines give calls_per_s over the whole run (p50/p99 per call).
            plugboard-plugin-echo must sit next to plugboard-bench; --sdk is the directory that
            holds the plugboard package (default sdk/python, from the repository root).
            """
    )

    @Option(help: "Calls per scenario.")
    var calls: Int = 5000

    @Option(help: "The Python interpreter.")
    var python: String = "python3"

    @Option(help: "The directory holding the plugboard package (put on PYTHONPATH).")
    var sdk: String = "sdk/python"

    func run() async throws {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let echo = (try selfExecutable() as NSString).deletingLastPathComponent + "/plugboard-plugin-echo"
        guard access(echo, X_OK) == 0 else { throw ValidationError("\(echo) is missing: build it first (make bench does)") }
        let sdkPath = (sdk as NSString).isAbsolutePath ? sdk : FileManager.default.currentDirectoryPath + "/" + sdk
        guard FileManager.default.fileExists(atPath: sdkPath + "/plugboard/__init__.py") else {
            throw ValidationError("no plugboard package in \(sdkPath): give --sdk DIR (the SDK's sdk/python)")
        }
        let dir = "/tmp/plugboard-bench-python-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = dir + "/echo.py"
        try """
            from plugboard import Plugin, serve
            plugin = Plugin("py-echo", version="1.0")

            @plugin.job("py.echo")
            async def echo(arg):
                return arg

            @plugin.job("py.echo-sync")
            def echo_sync(arg):
                return arg

            serve(plugin)
            """.write(toFile: script, atomically: true, encoding: .utf8)
        // The plugin inherits this process's environment (plus the PLUGBOARD_* variables).
        setenv("PYTHONPATH", sdkPath, 1)

        let engine = Engine(logger: logger)
        try await engine.boot([
            PluginSpec(name: "echo", kind: .exec(command: echo, arguments: [])),
            PluginSpec(name: "py-echo", kind: .exec(command: python, arguments: [script])),
        ])
        let payload: Value = .fields(("message", .string(String(repeating: "x", count: 64))), ("n", .int(42)))
        for (scenario, job) in [("pluginkit.echo", "echo"), ("python.echo", "py.echo"), ("python.echo_sync", "py.echo-sync")] {
            for _ in 0..<min(200, calls) { _ = try await engine.hub.call(job, payload) }   // warm up
            var sequential = Samples()
            for _ in 0..<calls {
                let t0 = now()
                _ = try await engine.hub.call(job, payload)
                sequential.add(now() - t0)
            }
            reportLatency(scenario + ".sequential", sequential)
            try await inFlight(engine, scenario: scenario + ".inflight64", job: job, payload: payload, width: 64)
        }
        await engine.shutdown(grace: .seconds(1))
    }

    /// `width` workers each with one call in flight; per-call latency and the overall rate.
    func inFlight(_ engine: Engine, scenario: String, job: String, payload: Value, width: Int) async throws {
        let total = calls
        let t0 = now()
        let samples = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for worker in 0..<width {
                group.addTask {
                    var mine: [UInt64] = []
                    for _ in stride(from: worker, to: total, by: width) {
                        let c0 = now()
                        _ = try await engine.hub.call(job, payload)
                        mine.append(now() - c0)
                    }
                    return mine
                }
            }
            var all = Samples()
            for try await part in group { for n in part { all.add(n) } }
            return all
        }
        let elapsed = Double(now() - t0) / 1e9
        print(jsonLine([
            ("scenario", .string(scenario)), ("runs", .int(samples.nanos.count)),
            ("p50_us", .double(samples.percentile(0.5))), ("p99_us", .double(samples.percentile(0.99))),
            ("calls_per_s", .double((Double(total) / elapsed).rounded())),
            ("limit_p50_us", .double(0)), ("limit_msgs_per_s", .double(0)),
        ]))
    }
}
