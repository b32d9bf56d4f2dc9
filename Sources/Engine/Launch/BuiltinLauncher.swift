import PluginKit
import Routing

/// A built-in plugin: its declaration, answered in process.
struct BuiltinLauncher: PluginLauncher {
    let plugin: any Plugin
    let engine: EngineParts

    func launch(_ request: LaunchRequest) async throws -> LaunchedPlugin {
        do {
            try plugin.checkOptions(request.spec.options)
        } catch {
            throw EngineError(.badSetting, "plugin \(request.name): \(error)")
        }
        let context = PluginContext(name: request.name, options: request.spec.options, restarts: request.restarts, engine: engine.callerFor(request.name))
        let declaration = plugin.declare(context)
        return LaunchedPlugin(
            description: PluginDescription(declaration),
            participant: .inProcess(request.name) { try await declaration.answer($0) },
            process: nil,
            onStop: declaration.onStop
        )
    }
}
