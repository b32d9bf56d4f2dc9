/// A plugin: one type that declares its jobs, hooks and pipeline types with their handlers.
public protocol Plugin: Sendable {
    /// The declaration, given the context the plugin runs in.
    func declare(_ context: PluginContext) -> PluginDeclaration
}
