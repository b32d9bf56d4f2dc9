#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Engine
import Foundation
import Logging
import Spawn

/// `plugboard-bench shell`: calls per second through plugboard-sh, in call and stream mode.
struct ShellBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shell",
        abstract: "Calls per second through plugboard-sh: one process per call, and one stream-mode process.",
        discussion: """
            Scenarios (an Engine in this process, plugboard-sh as an exec plugin, /bin/sh scripts):
              shell.call.sequential    one call at a time, a new script process per call
              shell.call.parallel4     four calls in flight (the adapter's default limit)
              shell.stream.sequential  one call at a time to the stream-mode script
            limit_p50_us on the call lines: posix_spawn + wait of the same script with no
            Plugboard in between (its fixed cost), measured in the same run.
            plugboard-sh must sit next to plugboard-bench.
            """
    )

    @Option(help: "Calls per scenario.")
    var calls: Int = 2000

    func run() async throws {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let sh = (try selfExecutable() as NSString).deletingLastPathComponent + "/plugboard-sh"
        guard access(sh, X_OK) == 0 else { throw ValidationError("\(sh) is missing: build it first (make bench does)") }
        let dir = "/tmp/plugboard-bench-shell-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = dir + "/bench.sh"
        try """
            #!/bin/sh
            # plugboard: job bench.call
            # plugboard: job bench.stream mode=stream
            if [ "$1" = "--stream" ]; then
                while IFS= read -r line; do echo '{"result": "ok"}'; done
                exit 0
            fi
            cat > /dev/null
            echo '"ok"'
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)

        let engine = Engine(logger: logger)
        try await engine.boot([PluginSpec(name: "bench", kind: .exec(command: sh, arguments: [script]))])
        defer { Task { await engine.shutdown(grace: .seconds(1)) } }

        let limit = try await rawSpawn(script, runs: min(calls, 500))
        var sequential = Samples()
        for _ in 0..<calls {
            let t0 = now()
            _ = try await engine.hub.call("bench.call", "x")
            sequential.add(now() - t0)
        }
        reportLatency("shell.call.sequential", sequential, limitP50: limit.percentile(0.5))

        let t0 = now()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for _ in stride(from: worker, to: self.calls, by: 4) { _ = try await engine.hub.call("bench.call", "x") }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = Double(now() - t0) / 1e9
        print(jsonLine([
            ("scenario", .string("shell.call.parallel4")), ("runs", .int(calls)),
            ("p50_us", .double(0)), ("p99_us", .double(0)),
            ("calls_per_s", .double((Double(calls) / elapsed).rounded())),
            ("limit_p50_us", .double(limit.percentile(0.5))), ("limit_msgs_per_s", .double(0)),
        ]))

        var stream = Samples()
        _ = try await engine.hub.call("bench.stream", "x")  // starts the process
        for _ in 0..<calls {
            let t0 = now()
            _ = try await engine.hub.call("bench.stream", "x")
            stream.add(now() - t0)
        }
        reportLatency("shell.stream.sequential", stream)
        await engine.shutdown(grace: .seconds(1))
    }

    /// The same script run directly: posix_spawn with pipes, feed stdin, read stdout, wait.
    func rawSpawn(_ script: String, runs: Int) async throws -> Samples {
        var s = Samples()
        for _ in 0..<runs {
            let t0 = now()
            let input = try PipeDescriptors.make()
            let out = try PipeDescriptors.make()
            let p = try ProcessSpawner.spawn(SpawnOptions(
                executable: script, arguments: ["bench.call"], environment: ProcessInfo.processInfo.environment,
                fileDescriptors: [0: input.readEnd, 1: out.writeEnd]
            ))
            close(input.readEnd)
            close(out.writeEnd)
            var payload = Array("\"x\"".utf8)
            _ = write(input.writeEnd, &payload, payload.count)
            close(input.writeEnd)
            try await PipeReader.read(fd: out.readEnd) { _ in }
            _ = await p.waitForExit()
            s.add(now() - t0)
        }
        return s
    }

}
