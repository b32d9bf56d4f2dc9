import Chan
import Hooks
import Routing

/// How a hook is registered: which event, when it runs, and what a failure means.
/// The declaration sends these in HELLO; the engine registers them as received.
public struct HookOptions: Sendable, Hashable {
    /// The event hooked (container.create).
    public var event: String
    /// When it runs: mutate (the default), validate or observe.
    public var phase: HookPhase
    /// Higher runs first; ties go by plugin name.
    public var priority: Int
    /// How long one call to the hook may take (default 2 s).
    public var timeout: Duration
    /// Whether a failure or timeout fails the operation (required, the default) or is skipped (optional).
    public var policy: HookPolicy
    /// May change fields that an earlier hook set, without a conflict (default false).
    public var overrides: Bool

    /// Options for a hook on `event`; by default a required mutating hook at priority 0 with a 2 s timeout.
    public init(event: String, phase: HookPhase = .mutate, priority: Int = 0, timeout: Duration = .seconds(2), policy: HookPolicy = .required, overrides: Bool = false) {
        self.event = event
        self.phase = phase
        self.priority = priority
        self.timeout = timeout
        self.policy = policy
        self.overrides = overrides
    }

    /// `{"event", "phase", "priority", "timeout_ms", "policy", "overrides"}`.
    public var wireValue: Value {
        .fields(
            ("event", .string(event)), ("phase", .string(phase.rawValue)),
            ("priority", .int(Int64(priority))), ("timeout_ms", .int(PluginDeclaration.milliseconds(timeout))),
            ("policy", .string(policy.rawValue)), ("overrides", .bool(overrides))
        )
    }

    /// Parses the wire form; missing fields take their defaults.
    public init(wire h: Value) throws {
        guard let event = h["event"]?.stringValue else {
            throw RoutingError(.badAnswer, "a hook declaration lacks \"event\"")
        }
        self.init(
            event: event,
            phase: h["phase"]?.stringValue.flatMap(HookPhase.init(rawValue:)) ?? .mutate,
            priority: Int(h["priority"]?.intValue ?? 0),
            timeout: .clampedMilliseconds(h["timeout_ms"]?.intValue, default: .seconds(2)),
            policy: h["policy"]?.stringValue.flatMap(HookPolicy.init(rawValue:)) ?? .required,
            overrides: h["overrides"]?.boolValue ?? false
        )
    }
}
