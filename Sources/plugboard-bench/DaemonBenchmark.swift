#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Engine
import Foundation
import Logging

/// `plugboard-bench daemon`: how fast an exec plugin becomes active, and comes back after a crash.
struct DaemonBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Spawn-to-active time of an exec plugin, and crash-to-active-again time minus the backoff.",
        discussion: """
            Scenarios:
              daemon.spawn_to_active        boot an engine with one exec plugin (plugboard-plugin-echo)
              daemon.crash_to_active        SIGKILL it and wait until it is active again; the
                                            configured backoff (jitter 0) is subtracted
            The plugin binary and plugboard-exec-shim must sit next to plugboard-bench.
            """
    )

    @Option(help: "Repetitions per scenario.")
    var runs: Int = 50

    @Option(help: "The backoff before a restart, in milliseconds (subtracted from the measurement).")
    var backoffMs: Int = 10

    func run() async throws {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let dir = (try selfExecutable() as NSString).deletingLastPathComponent
        let plugin = dir + "/plugboard-plugin-echo"
        guard access(plugin, X_OK) == 0 else {
            throw ValidationError("\(plugin) is missing: build it first (make bench does)")
        }
        let backoff = Backoff(initial: .milliseconds(backoffMs), maximum: .milliseconds(backoffMs), resetAfter: .zero, jitter: 0)
        func spec() -> PluginSpec {
            PluginSpec(name: "echo", kind: .exec(command: plugin, arguments: []), backoff: backoff, crashLoop: CrashLoopLimit(restarts: 1_000_000, window: .seconds(1)))
        }

        var spawn = Samples()
        for _ in 0..<runs {
            let engine = Engine(logger: logger)
            let t0 = now()
            try await engine.boot([spec()])
            spawn.add(now() - t0)
            await engine.shutdown(grace: .seconds(1))
        }
        reportLatency("daemon.spawn_to_active", spawn)

        let engine = Engine(logger: logger)
        let events = engine.events()
        var iterator = events.makeAsyncIterator()
        try await engine.boot([spec()])
        var crash = Samples()
        for i in 0..<runs {
            guard let pid = await engine.status().first?.pid else { throw ValidationError("no pid") }
            let t0 = now()
            kill(pid, SIGKILL)
            while let event = await iterator.next() {
                if event.state == .active && event.restarts == i + 1 { break }
            }
            let elapsed = now() - t0
            crash.add(elapsed > UInt64(backoffMs) * 1_000_000 ? elapsed - UInt64(backoffMs) * 1_000_000 : 0)
        }
        reportLatency("daemon.crash_to_active", crash, extra: [("backoff_ms_subtracted", .int(backoffMs))])
        await engine.shutdown(grace: .seconds(1))
    }

}
