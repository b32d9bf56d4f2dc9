import Chan
import Hooks
import Pipeline
import Routing

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

    /// A context for the plugin `name`; `engine` stays nil until it is connected.
    public init(name: String, options: String = "", restarts: Int = 0, engine: (any EngineCalls)? = nil) {
        self.name = name
        self.options = options
        self.restarts = restarts
        self.engine = engine
    }
}

/// What a plugin asks of the engine: other plugins' jobs, and hook chains it runs.
public protocol EngineCalls: Sendable {
    /// Calls `job`; throws a permission error unless the plugin declared and was granted it.
    func call(_ job: String, _ argument: Value, timeout: Duration) async throws -> Value

    /// Runs the hook chain of `event` over `payload` for `object` (validators, mutators,
    /// observers) and returns the outcome; a veto or a conflict throws. The plugin must
    /// declare the event with ``PluginDeclaration/runsHooks(_:)`` and be granted it.
    func runHooks(_ event: String, payload: Value, object: String) async throws -> HookOutcome

    /// Tells the observers of `event` (container.started, …) that it happened to `object`.
    func notify(_ event: String, payload: Value, object: String) async throws

    /// Calls the best provider of the extension point `point` (failing over in rank order
    /// when a provider goes away); the plugin needs the point in its `calls`, granted.
    func callBest(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value

    /// A new byte stream on the plugin's session: write to the writer, return the reader in
    /// a job's result (or pass it in an argument) and it reaches the caller through the
    /// daemon. Built-ins get theirs from the engine (an in-memory session pair).
    func makeByteStream() async throws -> (ByteStreamWriter, ByteStreamReader)

    /// Calls the provider named `provider` of `point` (the plugin needs the point granted).
    func callProvider(_ point: String, provider: String, _ argument: Value, timeout: Duration) async throws -> Value

    /// Calls every provider of `point`, best first: `[{"plugin", "priority", "ok"}` or
    /// `{"plugin", "priority", "error": {"code", "message"}}]`.
    func callAll(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value

    /// Sends a message of `type` into the pipeline and returns the run: the messages that
    /// came out and the path, plugin by plugin. The plugin must declare the type with
    /// ``PluginDeclaration/sendsMessages(_:)`` and be granted it.
    func send(_ type: String, _ body: Value) async throws -> PipelineResult
}

/// An error with a code of the plugin's own, which reaches its caller unchanged.
public typealias PluginError = Routing.PluginError

/// The grant name under which a plugin may send messages of `type` into the pipeline
/// (`pipeline.send:TYPE`), declared and granted like a job.
public func pipelineSendGrant(_ type: String) -> String { "pipeline.send:" + type }

/// The grant name under which a plugin may run `event`'s hook chain: it goes in the
/// declaration's `calls` and is granted like a job (`plugboard plugin grant NAME hooks.run:EVENT`).
public func hookRunGrant(_ event: String) -> String { "hooks.run:" + event }
