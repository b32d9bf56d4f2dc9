import ArgumentParser
import ContainersPlugin
import EchoPlugin
import Engine
import HostMountPlugin
import LocalVolumesPlugin
import Logging
import PluginKit
import Services
import StateService

/// The built-in plugins, by name. `containers` needs the engine's hooks and runc.
func makeBuiltins(engine: Engine, logger: Logger) -> [String: any Plugin] {
    var builtins: [String: any Plugin] = [
        "echo": EchoPlugin(),
        "host-mount": HostMountPlugin(),
        "local-volumes": LocalVolumesPlugin(),
    ]
    if let runtime = engine.containers {
        builtins["containers"] = ContainersPlugin(runc: runtime.runc, bundles: runtime.bundles + "/containers", logger: logger)
    }
    return builtins
}

/// Every built-in's name, whether or not it can run here.
let builtinNames = ["containers", "echo", "host-mount", "local-volumes"]

/// The services every plugboardd runs, before any other plugin: events, state, metrics.
func makeServices(engine: Engine, stateDirectory: String, metrics: MetricsPlugin) throws -> [PluginSpec] {
    let store: StateStore
    do {
        store = try StateStore(path: stateDirectory + "/state.sqlite")
    } catch {
        throw ValidationError("cannot open the state store \(stateDirectory)/state.sqlite: \(error)")
    }
    engine.setStateCustody(StoreCustody(store: store))
    return [
        PluginSpec(name: "events", kind: .builtin(EventsPlugin(bus: engine.bus)), openToAll: true),
        PluginSpec(name: "state", kind: .builtin(StatePlugin(store: store) { caller, grant in await engine.isGranted(caller, grant) }), openToAll: true),
        PluginSpec(name: "metrics", kind: .builtin(metrics), openToAll: true),
    ]
}
let serviceNames = ["events", "state", "metrics"]

/// The state service's store as the engine's keeper of plugins' state.
struct StoreCustody: PluginStateCustody {
    let store: StateStore
    func setAside(_ plugin: String) async throws -> Int { try await store.setAside(plugin) }
    func adopt(_ removed: String, into plugin: String) async throws -> Int { try await store.adopt(removed, into: plugin) }
}
