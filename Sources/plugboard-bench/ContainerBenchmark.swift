#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Containers
import Engine
import Foundation
import Logging
import PluginKit
import Spawn

/// `plugboard-bench containers`: a container plugin's start to active, next to a raw
/// `runc run` of the same bundle measured in the same run.
struct ContainerBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "containers",
        abstract: "Container plugin start-to-active next to a raw runc run of the same bundle (needs root and runc).",
        discussion: """
            Scenarios, alternating run by run so both see the same machine:
              containers.plugin_start_to_active   boot an engine with the bundle as a container
                                                  plugin until it is active (spec written, runc run,
                                                  HELLO, declaration, registration)
              containers.raw_runc_run             runc run of the same bundle and the same OCI spec,
                                                  until the plugin's first byte arrives on fd 4
            limit_p50_us on the first line is the raw runc p50.
            Example: plugboard-bench containers --bundle .build/plugins/label-release
            """
    )

    @Option(help: "A container plugin bundle (make bench builds the label bundle from the release binary).")
    var bundle: String = ".build/plugins/label-release"

    @Option(help: "Repetitions per scenario.")
    var runs: Int = 20

    func run() async throws {
        guard getuid() == 0 else { throw ValidationError("runc runs containers as root here: run plugboard-bench containers as root") }
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let bundle = URL(fileURLWithPath: self.bundle).standardizedFileURL.path
        let manifest = try PluginManifest.load(bundle: bundle)
        let state = "/tmp/plugboard-bench-containers-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: state) }
        let runtime = try ContainerRuntime(stateDirectory: state, shim: Engine.defaultShimPath())

        var plugin = Samples()
        var raw = Samples()
        for i in 0..<runs {
            // Through the engine.
            let engine = Engine(logger: logger, containers: runtime)
            let t0 = now()
            try await engine.boot([PluginSpec(name: "bench", kind: .container(bundle: bundle), grantAllPrivileges: true)])
            plugin.add(now() - t0)
            await engine.shutdown(grace: .seconds(2))

            // Raw: the same spec, runc run, first byte on fd 4.
            let rawBundle = state + "/raw"
            try OCISpec.forPlugin(name: "raw", bundle: bundle, manifest: manifest, granted: manifest.requestedPrivileges, environment: [
                "PLUGBOARD_PROTOCOL": PluginKit.protocolName, "PLUGBOARD_PLUGIN_NAME": "raw", "PLUGBOARD_RESTARTS": "0", "PLUGBOARD_OPTIONS": "",
            ]).write(toBundle: rawBundle)
            raw.add(try await rawRun(runtime.runc, bundle: rawBundle, id: "raw-\(i)"))
        }
        reportLatency("containers.plugin_start_to_active", plugin, limitP50: raw.percentile(0.5))
        reportLatency("containers.raw_runc_run", raw, limitP50: raw.percentile(0.5))
    }

    /// Nanoseconds from spawning `runc run` to the plugin's first byte on fd 4.
    func rawRun(_ runc: Runc, bundle: String, id: String) async throws -> UInt64 {
        let toChild = try PipeDescriptors.make()
        let fromChild = try PipeDescriptors.make()
        let null = open("/dev/null", O_WRONLY)
        let (executable, arguments) = runc.runCommand(id: id, bundle: bundle, preserveFDs: 2)
        let t0 = now()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: executable, arguments: arguments, environment: ProcessInfo.processInfo.environment,
            fileDescriptors: [1: null, 2: null, 3: toChild.readEnd, 4: fromChild.writeEnd]
        ))
        close(null)
        close(toChild.readEnd)
        close(fromChild.writeEnd)
        let elapsed: UInt64 = await withCheckedContinuation { c in
            // A real thread: the read blocks.
            Foundation.Thread.detachNewThread {
                var byte: UInt8 = 0
                _ = read(fromChild.readEnd, &byte, 1)
                c.resume(returning: now() - t0)
            }
        }
        close(toChild.writeEnd)  // the plugin sees its session end and exits
        if await process.waitForExit(timeout: .seconds(5)) == nil {
            await runc.kill(id, signal: "KILL")
            _ = await process.waitForExit()
        }
        close(fromChild.readEnd)
        await runc.delete(id)
        return elapsed
    }

}
