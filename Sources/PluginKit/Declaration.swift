import Chan
import Hooks
import Routing

/// A job handler: the argument in, the result out.
public typealias JobHandler = @Sendable (Value) async throws -> Value

/// Who is calling a job: a plugin's name when a plugin called it through the engine, nil
/// when an operator did (the admin socket) or the engine itself.
public struct JobCall: Sendable, Hashable {
    public var caller: String?

    public init(caller: String?) {
        self.caller = caller
    }
}

/// A job handler that also learns who called (the state service keeps a namespace per caller).
public typealias JobHandlerWithCall = @Sendable (Value, JobCall) async throws -> Value

/// What a mutating hook decides.
public enum HookAnswer: Sendable {
    /// Go on with this payload.
    case `continue`(Value)
    /// Refuse the operation, with a reason.
    case veto(String)
}

/// A hook handler: the event's payload (and, for validators, the attribution) in.
public typealias HookHandler = @Sendable (_ payload: Value, _ extra: Value) async throws -> HookAnswer

/// A pipeline handler: one message in, the messages to route on out.
public typealias MessageHandler = @Sendable (_ type: String, _ body: Value) async throws -> [(type: String, body: Value)]

/// Everything a plugin declares: its identity, what it serves, and what it needs.
///
/// The same declaration serves as a built-in (the engine calls ``answer(_:)`` in process)
/// and as a subprocess (``PluginKit/serve(_:)`` sends it in HELLO and answers over fds 3/4).
public struct PluginDeclaration: Sendable {
    public struct Job: Sendable {
        public var name: String
        public var handler: JobHandlerWithCall
    }

    public struct Hook: Sendable {
        public var options: HookOptions
        public var handler: HookHandler
    }

    public struct MessageType: Sendable {
        public var type: String
        public var priority: Int
        public var timeout: Duration
        public var handler: MessageHandler
    }

    public var name: String
    public var version: String
    public private(set) var jobs: [Job] = []
    public private(set) var hooks: [Hook] = []
    public private(set) var messageTypes: [MessageType] = []
    /// Jobs that must be active before this plugin is (boot order follows them).
    public var requires: [String] = []
    /// Jobs this plugin wants to call through the engine (it needs a grant for each).
    public var calls: [String] = []
    /// Runs when the engine stops the plugin (shutdown, disable, rm), after its
    /// registrations are withdrawn: a built-in releases what it holds here (the containers
    /// plugin stops its containers). A subprocess plugin is told by GOAWAY instead.
    public var onStop: (@Sendable () async -> Void)?

    public init(name: String, version: String = "0.0.0") {
        self.name = name
        self.version = version
    }

    /// Serves the job `name`.
    public mutating func job(_ name: String, _ handler: @escaping JobHandler) {
        jobs.append(Job(name: name) { argument, _ in try await handler(argument) })
    }

    /// Serves the job `name`, with the caller's identity.
    public mutating func job(_ name: String, withCall handler: @escaping JobHandlerWithCall) {
        jobs.append(Job(name: name, handler: handler))
    }

    /// Receives the lifecycle event `event`.
    public mutating func hook(
        _ event: String, phase: HookPhase = .mutate, priority: Int = 0, timeout: Duration = .seconds(2),
        policy: HookPolicy = .required, overrides: Bool = false, _ handler: @escaping HookHandler
    ) {
        hooks.append(Hook(options: HookOptions(event: event, phase: phase, priority: priority, timeout: timeout, policy: policy, overrides: overrides), handler: handler))
    }

    /// Handles pipeline messages of `type`.
    public mutating func messages(_ type: String, priority: Int = 0, timeout: Duration = .seconds(10), _ handler: @escaping MessageHandler) {
        messageTypes.append(MessageType(type: type, priority: priority, timeout: timeout, handler: handler))
    }

    /// Answers one invocation from the engine (see docs/PROTOCOL.md, "Routing calls").
    public func answer(_ invocation: Invocation) async throws -> Value {
        switch invocation.kind {
        case .job:
            guard let job = jobs.first(where: { $0.name == invocation.name }) else {
                throw RoutingError(.unknownJob, "plugin \(name) has no job \(invocation.name)", plugin: name)
            }
            return try await job.handler(invocation.payload, JobCall(caller: invocation.extra["caller"]?.stringValue))
        case .hook:
            let phase = invocation.extra["phase"]?.stringValue.flatMap(HookPhase.init(rawValue:)) ?? .mutate
            guard let hook = hooks.first(where: { $0.options.event == invocation.name && $0.options.phase == phase }) else {
                throw RoutingError(.unknownJob, "plugin \(name) has no \(phase.rawValue) hook for \(invocation.name)", plugin: name)
            }
            switch try await hook.handler(invocation.payload, invocation.extra) {
            case .continue(let payload): return phase == .mutate ? .fields(("payload", payload)) : .fields(("ok", true))
            case .veto(let reason): return .fields(("veto", .string(reason)))
            }
        case .pipeline:
            guard let type = messageTypes.first(where: { $0.type == invocation.name }) else {
                throw RoutingError(.unknownJob, "plugin \(name) does not handle \(invocation.name) messages", plugin: name)
            }
            let out = try await type.handler(invocation.name, invocation.payload)
            return .array(out.map { .fields(("type", .string($0.type)), ("body", $0.body)) })
        }
    }

    /// The declaration as sent in HELLO's `meta` (see docs/PROTOCOL.md).
    public var wireValue: Value {
        .fields(
            ("name", .string(name)),
            ("version", .string(version)),
            ("jobs", .array(jobs.map { .string($0.name) })),
            ("hooks", .array(hooks.map { $0.options.wireValue })),
            ("pipeline", .array(messageTypes.map { m in
                .fields(("type", .string(m.type)), ("priority", .int(Int64(m.priority))), ("timeout_ms", .int(Self.milliseconds(m.timeout))))
            })),
            ("requires", .array(requires.map { .string($0) })),
            ("calls", .array(calls.map { .string($0) }))
        )
    }

    static func milliseconds(_ d: Duration) -> Int64 { d.saturatingMilliseconds }
}

/// How a hook is registered: which event, when it runs, and what a failure means.
/// The declaration sends these in HELLO; the engine registers them as received.
public struct HookOptions: Sendable, Hashable {
    public var event: String
    public var phase: HookPhase
    public var priority: Int
    public var timeout: Duration
    public var policy: HookPolicy
    public var overrides: Bool

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

/// A plugin: one type that declares its jobs, hooks and pipeline types with their handlers.
public protocol Plugin: Sendable {
    /// The declaration, given the context the plugin runs in.
    func declare(_ context: PluginContext) -> PluginDeclaration
}
