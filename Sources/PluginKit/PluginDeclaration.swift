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
    /// Declares that this plugin runs the hook chain of `event` (through
    /// ``EngineCalls/runHooks(_:payload:object:)``) and tells its observers; the operator
    /// grants it like a job.
    public mutating func runsHooks(_ event: String) {
        let grant = hookRunGrant(event)
        if !calls.contains(grant) { calls.append(grant) }
    }

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
