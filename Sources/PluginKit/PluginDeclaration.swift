import Chan
import Hooks
import Pipeline
import Routing

/// A job handler: the argument in, the result out.
public typealias JobHandler = @Sendable (Value) async throws -> Value

/// Who is calling a job: a plugin's name when a plugin called it through the engine, nil
/// when an operator did (the admin socket) or the engine itself.
public struct JobCall: Sendable, Hashable {
    /// The calling plugin's name; nil for the operator or the engine.
    public var caller: String?

    /// A call from `caller` (nil: the operator or the engine).
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
    /// A job the plugin serves: its name and its handler.
    public struct Job: Sendable {
        /// The job's name.
        public var name: String
        /// How long a call may take when its caller sets no deadline (an operator's
        /// `plugboard call` without `--timeout`); nil: the engine's default, 10 s.
        public var timeout: Duration? = nil
        /// Answers one call, given the argument and who called.
        public var handler: JobHandlerWithCall
    }

    /// A hook the plugin registers: its options and its handler.
    public struct Hook: Sendable {
        /// Which event, when it runs, and what a failure means.
        public var options: HookOptions
        /// Handles one run of the hook.
        public var handler: HookHandler
    }

    /// A pipeline message type the plugin handles.
    public struct MessageType: Sendable {
        /// The message type.
        public var type: String
        /// Its priority (higher gets a message first).
        public var priority: Int
        /// How long one call to the handler may take.
        public var timeout: Duration
        /// What its failure means: the run fails (`required`) or the step is skipped (`optional`).
        public var policy: Pipeline.StepPolicy = .required
        /// Handles one message and returns the messages to route on.
        public var handler: MessageHandler
    }

    /// An extension point the plugin provides, ranked among other providers by priority.
    public struct Provider: Sendable {
        /// The extension point (`volume.driver`).
        public var point: String
        /// Its rank among providers: higher is better.
        public var priority: Int
        /// Answers one call.
        public var handler: JobHandlerWithCall
    }

    /// The plugin's declared name; the name it runs under (`NAME=` on the command line) wins over it.
    public var name: String
    /// Its version (default "0.0.0").
    public var version: String
    /// The jobs it serves, added with ``job(_:_:)`` and ``job(_:withCall:)``.
    public private(set) var jobs: [Job] = []
    /// The hooks it registers, added with ``hook(_:phase:priority:timeout:policy:overrides:_:)``.
    public private(set) var hooks: [Hook] = []
    /// The pipeline message types it handles, added with ``messages(_:priority:timeout:_:)``.
    public private(set) var messageTypes: [MessageType] = []
    /// The extension points it provides, added with ``provide(_:priority:_:)``.
    public private(set) var providers: [Provider] = []
    /// Jobs that must be active before this plugin is (boot order follows them).
    public var requires: [String] = []
    /// Jobs this plugin wants to call through the engine (it needs a grant for each).
    public var calls: [String] = []
    /// What its hooks need to change in what they are given, each a grant the operator
    /// gives (`mount=/srv/data`, `mount=/srv/data:ro`, `command`; see docs/CONTAINERS.md): a
    /// hook's change that needs one it was not granted fails its chain (a required hook)
    /// or is dropped (an optional one).
    public var hookPrivileges: [String] = []
    /// Runs when the engine stops the plugin (shutdown, disable, rm), after its
    /// registrations are withdrawn: a built-in releases what it holds here (the containers
    /// plugin stops its containers). A subprocess plugin is told by GOAWAY instead.
    public var onStop: (@Sendable () async -> Void)?

    /// A declaration of `name` at `version` that serves nothing yet.
    public init(name: String, version: String = "0.0.0") {
        self.name = name
        self.version = version
    }

    /// Serves the job `name`.
    public mutating func job(_ name: String, timeout: Duration? = nil, _ handler: @escaping JobHandler) {
        jobs.append(Job(name: name, timeout: timeout) { argument, _ in try await handler(argument) })
    }

    /// Provides the extension point `point` at `priority` (higher is better): callers ask for
    /// the best provider or for all of them in rank order, and several plugins may provide it.
    public mutating func provide(_ point: String, priority: Int = 0, _ handler: @escaping JobHandler) {
        providers.append(Provider(point: point, priority: priority) { argument, _ in try await handler(argument) })
    }

    /// Serves the job `name`, with the caller's identity.
    public mutating func job(_ name: String, timeout: Duration? = nil, withCall handler: @escaping JobHandlerWithCall) {
        jobs.append(Job(name: name, timeout: timeout, handler: handler))
    }

    /// Receives the lifecycle event `event`.
    public mutating func hook(
        _ event: String, phase: HookPhase = .mutate, priority: Int = 0, timeout: Duration = .seconds(2),
        policy: HookPolicy = .required, overrides: Bool = false, _ handler: @escaping HookHandler
    ) {
        hooks.append(Hook(options: HookOptions(event: event, phase: phase, priority: priority, timeout: timeout, policy: policy, overrides: overrides), handler: handler))
    }

    /// Declares that this plugin runs the hook chain of `event` (through
    /// ``EngineCalls/runHooks(_:payload:object:)``) and tells its observers; the operator
    /// grants it like a job.
    public mutating func runsHooks(_ event: String) {
        let grant = hookRunGrant(event)
        if !calls.contains(grant) { calls.append(grant) }
    }

    /// Declares that this plugin sends messages of `type` into the pipeline (through
    /// ``EngineCalls/send(_:_:)``); the operator grants it like a job.
    public mutating func sendsMessages(_ type: String) {
        let grant = pipelineSendGrant(type)
        if !calls.contains(grant) { calls.append(grant) }
    }

    /// Handles pipeline messages of `type`, at `priority`; each call may take up to `timeout`.
    public mutating func messages(_ type: String, priority: Int = 0, timeout: Duration = .seconds(10), policy: Pipeline.StepPolicy = .required, _ handler: @escaping MessageHandler) {
        messageTypes.append(MessageType(type: type, priority: priority, timeout: timeout, policy: policy, handler: handler))
    }

    /// Answers one invocation from the engine (see docs/PROTOCOL.md, "Routing calls").
    public func answer(_ invocation: Invocation) async throws -> Value {
        switch invocation.kind {
        case .job:
            // A job, or an extension point this plugin provides (called as its best provider or one of all).
            guard let handler = jobs.first(where: { $0.name == invocation.name })?.handler
                ?? providers.first(where: { $0.point == invocation.name })?.handler else {
                throw RoutingError(.unknownJob, "plugin \(name) has no job \(invocation.name)", plugin: name)
            }
            return try await handler(invocation.payload, JobCall(caller: invocation.extra["caller"]?.stringValue))
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
                .fields(("type", .string(m.type)), ("priority", .int(Int64(m.priority))), ("timeout_ms", .int(Self.milliseconds(m.timeout))), ("policy", .string(m.policy.rawValue)))
            })),
            ("provides", .array(providers.map { .fields(("point", .string($0.point)), ("priority", .int(Int64($0.priority)))) })),
            ("requires", .array(requires.map { .string($0) })),
            ("calls", .array(calls.map { .string($0) })),
            ("hook_privileges", .array(hookPrivileges.map { .string($0) })),
            ("job_timeouts", .map(jobs.compactMap { job in job.timeout.map { (key: .string(job.name), value: .int(Self.milliseconds($0))) } }))
        )
    }

    static func milliseconds(_ d: Duration) -> Int64 { d.saturatingMilliseconds }
}
