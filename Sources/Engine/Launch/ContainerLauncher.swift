import Containers
import Foundation
import NIOConcurrencyHelpers
import Routing

/// A container plugin: its manifest's privileges checked against the grants, the OCI spec
/// written, and `runc run --preserve-fds 2`, which hands fds 3 and 4 to the plugin inside.
final class ContainerLauncher: PluginLauncher {
    let bundle: String
    let engine: EngineParts
    /// The runc id of the current container while it may exist.
    private let current = NIOLockedValueBox<String?>(nil)

    init(bundle: String, engine: EngineParts) {
        self.bundle = bundle
        self.engine = engine
    }

    var containerID: String? { get async { current.withLockedValue { $0 } } }

    func launch(_ request: LaunchRequest) async throws -> LaunchedPlugin {
        let name = request.name
        guard let runtime = engine.containers else {
            throw EngineError(.startFailed, "plugin \(name): container plugins need runc, and this plugboardd has none (install Debian's runc package)")
        }
        let manifest: PluginManifest
        do {
            manifest = try PluginManifest.load(bundle: bundle)
        } catch {
            throw EngineError(.startFailed, "plugin \(name): \(error)")
        }
        let requested = manifest.requestedPrivileges
        let missing = Privilege.missing(requested, granted: request.spec.privileges.union(request.extraPrivileges), all: request.spec.grantAllPrivileges)
        guard missing.isEmpty else { throw EngineError(.permissionDenied, Privilege.refusal(plugin: name, missing: missing)) }
        // A new version started beside the old one (plugin upgrade) has an identity of its own.
        let runtimeName = name + (request.spec.instance.map { "." + $0 } ?? "")
        let id = ContainerRuntime.pluginContainerID(runtimeName)
        let directory = runtime.bundles + "/plugins/" + runtimeName
        do {
            var spec = try OCISpec.forPlugin(name: name, bundle: bundle, manifest: manifest, granted: requested, environment: pluginEnvironment(request))
            // runc applies these through the container's own cgroup.
            let limits = request.spec.limits
            spec.limit(memoryBytes: limits.memoryBytes, pids: limits.pids, cpus: limits.cpus)
            try spec.write(toBundle: directory)
        } catch {
            throw EngineError(.startFailed, "plugin \(name): cannot write its OCI spec: \(error)")
        }
        // A container of this name exists only if removing the last one failed: boot clears
        // what a killed daemon left, and every end is followed by a delete.
        if current.withLockedValue({ $0 }) != nil { await runtime.runc.delete(id) }
        current.withLockedValue { $0 = id }
        let (executable, arguments) = runtime.runc.runCommand(id: id, bundle: directory, preserveFDs: 2)
        do {
            return try await startPluginProcess(
                request, executable: executable, arguments: arguments, environment: ProcessInfo.processInfo.environment,
                what: "runc for \(bundle)", engine: engine
            )
        } catch {
            await cleanUp()
            throw error
        }
    }

    /// Removes the container from runc's state.
    func cleanUp() async {
        guard let id = current.withLockedValue({ $0 }), let runtime = engine.containers else { return }
        if await runtime.runc.delete(id) { current.withLockedValue { $0 = nil } }
    }
}
