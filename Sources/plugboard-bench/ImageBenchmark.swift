#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Containers
import Engine
import Foundation
import Logging
import NIOConcurrencyHelpers

/// `plugboard-bench images`: pulling and unpacking the label plugin's image through the
/// daemon's code path next to a raw `skopeo copy` + `umoci raw unpack` of the same image,
/// and the failed calls of live upgrades under load.
struct ImageBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "images",
        abstract: "Plugin images: install.label (pull + unpack) next to raw skopeo + umoci, and upgrade.calls_failed (needs root).",
        discussion: """
            Scenarios:
              install.label           Engine.fetchImage of the label image from a registry on 127.0.0.1:
                                      skopeo copy (digest pinned, blobs verified) + umoci raw unpack + the
                                      manifest read, the way plugin install does it, before the plugin starts
              install.raw_skopeo_umoci   skopeo copy of the same image into a layout + umoci raw unpack,
                                      alternating run by run with install.label (its p50 is limit_p50_us)
              upgrade.calls_failed    an exec plugin upgraded --upgrades times (version 1 <-> 2) while
                                      --clients tasks call its job in a loop; prints the failed calls (must be 0)
            The registry is $PLUGBOARD_TEST_REGISTRY (make bench starts one with .ci/with-registry) or --registry.
            Example: .ci/with-registry plugboard-bench images --bundle .build/plugins/label-release
            """
    )

    @Option(help: "The label plugin's bundle (make bench builds it from the release binary).")
    var bundle: String = ".build/plugins/label-release"

    @Option(help: "A registry on 127.0.0.1 (HOST:PORT); default $PLUGBOARD_TEST_REGISTRY.")
    var registry: String?

    @Option(help: "Repetitions of each install scenario.")
    var runs: Int = 10

    @Option(help: "Upgrades under load.")
    var upgrades: Int = 10

    @Option(help: "Clients calling during the upgrades.")
    var clients: Int = 8

    func run() async throws {
        guard getuid() == 0 else { throw ValidationError("plugin images run as container plugins (runc, as root): run plugboard-bench images as root") }
        guard let registry = registry ?? ProcessInfo.processInfo.environment["PLUGBOARD_TEST_REGISTRY"] else {
            throw ValidationError("no registry: set PLUGBOARD_TEST_REGISTRY or --registry (make bench runs this under .ci/with-registry)")
        }
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let bundle = URL(fileURLWithPath: self.bundle).standardizedFileURL.path
        let state = "/tmp/plugboard-bench-images-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: state) }
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let reference = registry + "/bench/label:1.0"
        try await Self.makeAndPush(bundle: bundle, layout: state + "/layout", reference: reference)

        let runtime = try ContainerRuntime(stateDirectory: state, shim: Engine.defaultShimPath())
        let engine = Engine(logger: logger, containers: runtime)
        let skopeo = try ExternalTool.find("skopeo")
        let umoci = try ExternalTool.find("umoci")
        var install = Samples()
        var raw = Samples()
        for i in 0..<runs {
            let t0 = now()
            let fetched = try await engine.fetchImage(reference)
            install.add(now() - t0)
            engine.removeFetchedImage(fetched.bundle)

            let dir = state + "/raw-\(i)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let t1 = now()
            let copy = try await skopeo.run(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "docker://" + reference, "oci:" + dir + "/image:plugin"])
            guard copy.status.isSuccess else { throw ValidationError("skopeo copy: \(copy.reason)") }
            let unpack = try await umoci.run(["raw", "unpack", "--image", dir + "/image:plugin", dir + "/rootfs"])
            guard unpack.status.isSuccess else { throw ValidationError("umoci raw unpack: \(unpack.reason)") }
            raw.add(now() - t1)
            try? FileManager.default.removeItem(atPath: dir)
        }
        reportLatency("install.label", install, limitP50: raw.percentile(0.5))
        reportLatency("install.raw_skopeo_umoci", raw, limitP50: raw.percentile(0.5))
        await engine.shutdown(grace: .seconds(2))

        try await upgradeUnderLoad(logger: logger)
    }

    /// The label bundle as an image (as `plugboard plugin create` makes it), pushed to `reference`.
    static func makeAndPush(bundle: String, layout: String, reference: String) async throws {
        let umoci = try ExternalTool.find("umoci")
        let skopeo = try ExternalTool.find("skopeo")
        let manifest = try String(contentsOfFile: bundle + "/plugin.json", encoding: .utf8)
        let image = layout + ":label"
        for args in [
            ["init", "--layout", layout], ["new", "--image", image], ["insert", "--image", image, bundle + "/rootfs", "/"],
            ["config", "--image", image, "--config.label", PluginImages.manifestLabel + "=" + manifest, "--config.label", PluginImages.nameLabel + "=label"],
        ] {
            let r = try await umoci.run(args)
            guard r.status.isSuccess else { throw ValidationError("umoci \(args[0]): \(r.reason)") }
        }
        let push = try await skopeo.run(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", "oci:" + image, "docker://" + reference])
        guard push.status.isSuccess else { throw ValidationError("skopeo copy (push): \(push.reason)") }
    }

    /// `upgrades` live upgrades of an exec plugin while `clients` tasks call its job.
    func upgradeUnderLoad(logger: Logger) async throws {
        let plugin = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("plugboard-test-plugin").path
        guard FileManager.default.isExecutableFile(atPath: plugin) else {
            throw ValidationError("\(plugin) is not built: swift build -c release --product plugboard-test-plugin (make bench does)")
        }
        let engine = Engine(logger: logger)
        try await engine.boot([PluginSpec(name: "svc", kind: .exec(command: plugin, arguments: ["version=1"]))])
        let stop = NIOLockedValueBox(false)
        let calls = NIOLockedValueBox((ok: 0, failed: 0))
        var samples = Samples()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<clients {
                group.addTask {
                    while !stop.withLockedValue({ $0 }) {
                        do {
                            _ = try await engine.hub.call("svc.version", .nil, timeout: .seconds(10))
                            calls.withLockedValue { $0.ok += 1 }
                        } catch {
                            calls.withLockedValue { $0.failed += 1 }
                        }
                    }
                }
            }
            for i in 0..<upgrades {
                let t0 = now()
                _ = try await engine.upgrade("svc", exec: "\(plugin) version=\(i % 2 == 0 ? 2 : 1)")
                samples.add(now() - t0)
            }
            stop.withLockedValue { $0 = true }
            try await group.waitForAll()
        }
        await engine.shutdown(grace: .seconds(2))
        let (ok, failed) = calls.withLockedValue { $0 }
        reportLatency("upgrade.duration", samples)
        print(jsonLine([
            ("scenario", .string("upgrade.calls_failed")), ("value", .int(failed)), ("calls", .int(ok + failed)),
            ("upgrades", .int(upgrades)), ("clients", .int(clients)),
        ]))
    }
}
