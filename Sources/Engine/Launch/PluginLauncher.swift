import Chan
import Containers
import PluginKit
import Routing
import Spawn

/// What a supervisor knows when it starts a plugin (again).
struct LaunchRequest: Sendable {
    /// The name it runs under.
    var name: String
    /// Whether the name was given (`NAME=`) or is still to be learned from its declaration.
    var nameIsKnown: Bool
    var spec: PluginSpec
    var restarts: Int
    /// Container privileges granted after it was added (`plugboard plugin grant`).
    var extraPrivileges: Set<Privilege>
    /// The cgroup its process starts in (exec plugins, where cgroups are writable).
    var cgroup: PluginCgroup? = nil
}

/// A plugin's process and its session, for exec and container plugins.
struct PluginProcessRun: Sendable {
    let process: SpawnedProcess
    let session: Session
    /// Copies its stdout and stderr to the log; cancelled when the run is over.
    let output: Task<Void, Never>
}

/// One run of a plugin, as its launcher started it: its declaration, how to reach it, and
/// (for exec and container plugins) its process.
struct LaunchedPlugin: Sendable {
    let description: PluginDescription
    let participant: Participant
    let process: PluginProcessRun?
    /// A built-in's `onStop`.
    let onStop: (@Sendable () async -> Void)?
    /// A remote plugin's connection.
    var remote: RemoteRun? = nil
}

/// Starts one kind of plugin: built-in, exec or container. One launcher per supervisor.
protocol PluginLauncher: Sendable {
    /// Starts the plugin and waits for its declaration; registers nothing.
    func launch(_ request: LaunchRequest) async throws -> LaunchedPlugin
    /// Cleans up after a run has ended (a container plugin's runc state). Idempotent.
    func cleanUp() async
    /// The runc id of a container plugin's current container, while it may exist.
    var containerID: String? { get async }
}

extension PluginLauncher {
    func cleanUp() async {}
    var containerID: String? { get async { nil } }
}

extension PluginSpec.Kind {
    /// The launcher for this kind of plugin.
    func makeLauncher(engine: EngineParts) -> any PluginLauncher {
        switch self {
        case .builtin(let plugin): return BuiltinLauncher(plugin: plugin, engine: engine)
        case .exec(let command, let arguments): return ExecLauncher(command: command, arguments: arguments, engine: engine)
        case .container(let bundle): return ContainerLauncher(bundle: bundle, engine: engine)
        case .remote: return RemoteLauncher(engine: engine)
        }
    }
}

/// The PLUGBOARD_* variables every subprocess and container plugin gets.
func pluginEnvironment(_ request: LaunchRequest) -> [String: String] {
    var environment: [String: String] = [:]
    // Without NAME= the plugin names itself (its declared name); after that it is known.
    if request.nameIsKnown { environment["PLUGBOARD_PLUGIN_NAME"] = request.name }
    environment["PLUGBOARD_PROTOCOL"] = PluginKit.protocolName
    environment["PLUGBOARD_RESTARTS"] = String(request.restarts)
    environment["PLUGBOARD_OPTIONS"] = request.spec.options
    return environment
}
