import Chan
import Routing

/// What happens when a hook fails or times out.
public enum HookPolicy: String, Sendable, Codable {
    /// The operation fails with the hook's error.
    case required
    /// The hook is logged and skipped; the chain goes on with the payload unchanged.
    case optional
}

/// When a hook runs.
public enum HookPhase: String, Sendable, Codable {
    /// In priority order, each fed the previous output; may change the payload or veto.
    case mutate
    /// After the chain, concurrently, seeing the final payload and its attribution; may reject.
    case validate
    /// After the fact (container.started, …), without blocking the operation, in order per observer.
    case observe
}

/// One hook registration.
public struct HookRegistration: Sendable, PrioritizedRegistration {
    /// The event hooked (container.create).
    public var event: String
    /// The plugin that registered it.
    public var owner: String
    /// When it runs: in the mutating chain, as a validator, or as an observer.
    public var phase: HookPhase
    /// Higher runs first; ties go by plugin name.
    public var priority: Int
    /// How long one call to the hook may take.
    public var timeout: Duration
    /// Whether a failure or timeout fails the operation or is skipped.
    public var policy: HookPolicy
    /// May change fields that an earlier hook set, without a conflict.
    public var overrides: Bool
    /// Where the hook's handler is reached, in this process or over a session.
    public var participant: Participant
}

/// The result of a hook chain.
public struct HookOutcome: Sendable {
    /// One hook that ran.
    public struct Step: Sendable, Hashable {
        /// The plugin whose hook ran.
        public var plugin: String
        /// The field paths it changed (`labels.team`, `mounts[2]`).
        public var changed: [String]
    }

    /// The final payload.
    public var payload: Value
    /// Which plugin set each field (field path → plugin).
    public var attribution: [String: String]
    /// Mutating hooks that ran, in order, with the fields each changed.
    public var steps: [Step]
    /// Optional hooks that failed and were skipped, with why.
    public var skipped: [(plugin: String, reason: String)]

    /// `{"field": "plugin", ...}` for sending to validators and showing to people.
    public var attributionValue: Value {
        .map(attribution.keys.sorted().map { (key: .string($0), value: .string(attribution[$0] ?? "")) })
    }

    /// An outcome from its parts.
    public init(payload: Value, attribution: [String: String], steps: [Step], skipped: [(plugin: String, reason: String)]) {
        self.payload = payload
        self.attribution = attribution
        self.steps = steps
        self.skipped = skipped
    }

    /// The outcome on the wire (the answer to a plugin's `hooks.run`):
    /// `{"payload", "attribution": {field: plugin}, "steps": [{"plugin", "changed"}], "skipped": [{"plugin", "reason"}]}`.
    public var value: Value {
        .fields(
            ("payload", payload), ("attribution", attributionValue),
            ("steps", .array(steps.map { .fields(("plugin", .string($0.plugin)), ("changed", .array($0.changed.map { .string($0) }))) })),
            ("skipped", .array(skipped.map { .fields(("plugin", .string($0.plugin)), ("reason", .string($0.reason))) }))
        )
    }

    /// Reads an outcome from its wire form; throws ``RoutingError/Code/rejected`` when it is not one.
    public init(value: Value) throws {
        guard let payload = value["payload"] else { throw RoutingError(.rejected, "a hook outcome lacks its \"payload\"") }
        var attribution: [String: String] = [:]
        for entry in value["attribution"]?.mapValue ?? [] {
            if let k = entry.key.stringValue, let v = entry.value.stringValue { attribution[k] = v }
        }
        let steps = (value["steps"]?.arrayValue ?? []).map {
            Step(plugin: $0["plugin"]?.stringValue ?? "", changed: ($0["changed"]?.arrayValue ?? []).compactMap(\.stringValue))
        }
        let skipped = (value["skipped"]?.arrayValue ?? []).map { (plugin: $0["plugin"]?.stringValue ?? "", reason: $0["reason"]?.stringValue ?? "") }
        self.init(payload: payload, attribution: attribution, steps: steps, skipped: skipped)
    }
}

/// What happened in one hook chain or notification, for the events service.
public struct HookReport: Sendable {
    /// The event (container.create).
    public var event: String
    /// What it was about (a container id).
    public var object: String
    /// "ok", "notified", or the error's code ("vetoed", "field conflict", ...).
    public var result: String
    /// The plugins whose mutating hooks ran, in order; on an error, the plugin it names.
    public var plugins: [String]
    /// Optional hooks skipped after failing.
    public var skipped: [String]
    /// The error's text, if any.
    public var detail: String
    /// A notification's payload.
    public var payload: Value = .nil
}
