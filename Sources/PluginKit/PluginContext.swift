import Chan

/// What a running plugin knows about its situation.
public struct PluginContext: Sendable {
    /// The name the daemon gave it (`--plugin-exec "NAME=..."`), or its declared name.
    public var name: String
    /// The option string (`--plugin host-mount "/data /var/data"` gives "/data /var/data").
    public var options: String
    /// How many times it has been restarted: a plugin can rebuild its state when > 0.
    public var restarts: Int
    /// Calls a job through the engine, with this plugin's grants. Nil until connected.
    public var engine: (any EngineCalls)?

    public init(name: String, options: String = "", restarts: Int = 0, engine: (any EngineCalls)? = nil) {
        self.name = name
        self.options = options
        self.restarts = restarts
        self.engine = engine
    }
}

/// Calling other plugins' jobs through the engine.
public protocol EngineCalls: Sendable {
    /// Calls `job`; throws a permission error unless the plugin declared and was granted it.
    func call(_ job: String, _ argument: Value, timeout: Duration) async throws -> Value
}
