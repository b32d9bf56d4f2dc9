/// A plugin: one type that declares its jobs, hooks and pipeline types with their handlers.
public protocol Plugin: Sendable {
    /// The declaration, given the context the plugin runs in.
    func declare(_ context: PluginContext) -> PluginDeclaration

    /// Refuses an option string the plugin cannot work with, before it is started: a
    /// built-in added with bad options is refused at once, not at its first call. The
    /// default accepts anything.
    func checkOptions(_ options: String) throws
}

extension Plugin {
    /// Accepts any options.
    public func checkOptions(_ options: String) throws {}
}
