import Chan

/// A request naming a plugin that another may require: `force` overrides that, and
/// defaults to false when absent.
public protocol ForceableRequest: AdminRequest {
    /// The plugin.
    var name: String { get }
    /// Act even if other plugins require it.
    var force: Bool { get }
    /// A request for `name`.
    init(name: String, force: Bool)
}

/// The wire names of a ``ForceableRequest``'s fields.
private enum ForceableKeys: String, CodingKey { case name, force }

extension ForceableRequest {
    /// Decodes `{"name", "force"?}`.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: ForceableKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name), force: try c.decodeIfPresent(Bool.self, forKey: .force) ?? false)
    }

    /// Encodes `{"name", "force"}`.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: ForceableKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(force, forKey: .force)
    }
}

/// The requests of the admin socket, one type per command. docs/ADMIN.md shows each on
/// the wire.
public enum Admin {
    /// `plugin.ls`: every plugin, in boot order.
    public struct PluginList: AdminRequest {
        /// The command: `plugin.ls`.
        public static let command = AdminCommand.pluginList
        /// What the daemon answers: one row per plugin, in boot order.
        public typealias Reply = [PluginRow]
        /// The request has no fields.
        public init() {}
    }

    /// One plugin as `plugboard plugin ls` shows it.
    public struct PluginRow: Codable, Sendable, Hashable {
        /// Its name.
        public var name: String
        /// builtin, exec or container.
        public var kind: String
        /// starting, active, restarting, failed, disabled or stopped.
        public var state: String
        /// Its process, for exec and container plugins that run.
        public var pid: Int64?
        /// How often it was restarted.
        public var restarts: Int
        /// Seconds since it became active this time, to a tenth; nil when not active.
        public var uptimeSeconds: Double?
        /// Jobs, hooks and pipeline types it registered.
        public var registrations: Int
        /// The image it was installed from (`plugin install`), nil otherwise.
        public var image: String?
        /// The image's pinned manifest digest.
        public var digest: String?
        /// A remote plugin's peer while it is connected (then `uptime_s` is how long it has
        /// been connected); absent for every other plugin.
        public var peer: String? = nil

        /// A row.
        public init(name: String, kind: String, state: String, pid: Int64?, restarts: Int, uptimeSeconds: Double?, registrations: Int, peer: String? = nil) {
            self.peer = peer
            self.name = name
            self.kind = kind
            self.state = state
            self.pid = pid
            self.restarts = restarts
            self.uptimeSeconds = uptimeSeconds
            self.registrations = registrations
        }

        enum CodingKeys: String, CodingKey {
            case name, kind, state, pid, restarts, registrations, image, digest, peer
            case uptimeSeconds = "uptime_s"
        }

        /// Encodes every field, `pid` and `uptime_s` as nil when absent (columns stay put).
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(kind, forKey: .kind)
            try c.encode(state, forKey: .state)
            try c.encode(pid, forKey: .pid)
            try c.encode(restarts, forKey: .restarts)
            try c.encode(uptimeSeconds, forKey: .uptimeSeconds)
            try c.encode(registrations, forKey: .registrations)
            // Only installed images have these: other rows are as they were.
            try c.encodeIfPresent(image, forKey: .image)
            try c.encodeIfPresent(digest, forKey: .digest)
            try c.encodeIfPresent(peer, forKey: .peer)
        }
    }

    /// `plugin.inspect`: everything about one plugin, as a free-form map.
    public struct PluginInspect: AdminRequest {
        /// The command: `plugin.inspect`.
        public static let command = AdminCommand.pluginInspect
        /// What the daemon answers: a free-form map about the plugin.
        public typealias Reply = Value
        /// The plugin.
        public var name: String
        /// Inspects `name`.
        public init(name: String) { self.name = name }
    }

    /// `plugin.add`: adds and starts a plugin; exactly one of `exec`, `builtin`, `container`.
    public struct PluginAdd: AdminRequest {
        /// The command: `plugin.add`.
        public static let command = AdminCommand.pluginAdd
        /// What the daemon answers: the plugin's name and its state once added.
        public typealias Reply = PluginAdded
        /// Its name.
        public var name: String
        /// A subprocess: "COMMAND ARGS" (split on spaces).
        public var exec: String?
        /// A built-in, by name.
        public var builtin: String?
        /// A container plugin's bundle: an absolute path.
        public var container: String?
        /// The option string.
        public var options: String?
        /// Grant every job it asks to call and every privilege its manifest asks for.
        public var grantAllPermissions: Bool
        /// Container privileges granted one by one (`network=host`, `mount=SRC:DST[:ro]`, …).
        public var privileges: [String]?
        /// Take over the state a removed plugin of this name left (`--adopt-state NAME`); a new
        /// plugin starts with an empty state namespace otherwise.
        public var adoptState: String?

        /// A request to add `name`.
        public init(name: String, exec: String? = nil, builtin: String? = nil, container: String? = nil, options: String? = nil, grantAllPermissions: Bool = false, privileges: [String]? = nil, adoptState: String? = nil) {
            self.adoptState = adoptState
            self.name = name
            self.exec = exec
            self.builtin = builtin
            self.container = container
            self.options = options
            self.grantAllPermissions = grantAllPermissions
            self.privileges = privileges
        }

        enum CodingKeys: String, CodingKey {
            case name, exec, builtin, container, options, privileges
            case grantAllPermissions = "grant_all_permissions"
            case adoptState = "adopt_state"
        }

        /// Decodes a request; `grant_all_permissions` defaults to false.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            exec = try c.decodeIfPresent(String.self, forKey: .exec)
            builtin = try c.decodeIfPresent(String.self, forKey: .builtin)
            container = try c.decodeIfPresent(String.self, forKey: .container)
            options = try c.decodeIfPresent(String.self, forKey: .options)
            grantAllPermissions = try c.decodeIfPresent(Bool.self, forKey: .grantAllPermissions) ?? false
            privileges = try c.decodeIfPresent([String].self, forKey: .privileges)
            adoptState = try c.decodeIfPresent(String.self, forKey: .adoptState)
        }
    }

    /// The answer to `plugin.add`.
    public struct PluginAdded: Codable, Sendable, Hashable {
        /// The plugin's name.
        public var name: String
        /// Its state once added (active).
        public var state: String
        /// The answer.
        public init(name: String, state: String) {
            self.name = name
            self.state = state
        }
    }

    /// `plugin.rm`: stops and forgets a plugin; refused while another requires it, unless `force`.
    public struct PluginRemove: ForceableRequest {
        /// The command: `plugin.rm`.
        public static let command = AdminCommand.pluginRemove
        /// What the daemon answers: "removed".
        public typealias Reply = String
        /// The plugin.
        public var name: String
        /// Remove it even if others require it.
        public var force: Bool
        /// Removes `name`.
        public init(name: String, force: Bool = false) {
            self.name = name
            self.force = force
        }
    }

    /// `plugin.enable`: starts a disabled, stopped or failed plugin again.
    public struct PluginEnable: AdminRequest {
        /// The command: `plugin.enable`.
        public static let command = AdminCommand.pluginEnable
        /// What the daemon answers: "enabled".
        public typealias Reply = String
        /// The plugin.
        public var name: String
        /// Enables `name`.
        public init(name: String) { self.name = name }
    }

    /// `plugin.disable`: stops a plugin and keeps it stopped; refused while another requires it, unless `force`.
    public struct PluginDisable: ForceableRequest {
        /// The command: `plugin.disable`.
        public static let command = AdminCommand.pluginDisable
        /// What the daemon answers: "disabled".
        public typealias Reply = String
        /// The plugin.
        public var name: String
        /// Disable it even if others require it.
        public var force: Bool
        /// Disables `name`.
        public init(name: String, force: Bool = false) {
            self.name = name
            self.force = force
        }
    }

    /// `plugin.restart`: restarts a plugin now, clearing a crash loop.
    public struct PluginRestart: AdminRequest {
        /// The command: `plugin.restart`.
        public static let command = AdminCommand.pluginRestart
        /// What the daemon answers: "restarted".
        public typealias Reply = String
        /// The plugin.
        public var name: String
        /// Restarts `name`.
        public init(name: String) { self.name = name }
    }

    /// `plugin.grant`: grants jobs it may call and container privileges, in one list.
    public struct PluginGrant: AdminRequest {
        /// The command: `plugin.grant`.
        public static let command = AdminCommand.pluginGrant
        /// What the daemon answers: "granted".
        public typealias Reply = String
        /// The plugin.
        public var name: String
        /// Jobs and privileges (`network=host`, `mount=…`, `capability=…`, `device=…`).
        public var jobs: [String]
        /// Grants `jobs` to `name`.
        public init(name: String, jobs: [String]) {
            self.name = name
            self.jobs = jobs
        }
    }

    /// `plugin.set`: changes supervision settings and priorities (KEY=VALUE).
    public struct PluginSet: AdminRequest {
        /// The command: `plugin.set`.
        public static let command = AdminCommand.pluginSet
        /// What the daemon answers: "set".
        public typealias Reply = String
        /// The plugin.
        public var name: String
        /// restart-policy, backoff-initial, …, priority:EVENT, timeout:EVENT, pipeline-priority:TYPE.
        public var settings: [String: String]
        /// Sets `settings` on `name`.
        public init(name: String, settings: [String: String]) {
            self.name = name
            self.settings = settings
        }
    }

    /// `call`: calls a job as the operator.
    public struct Call: AdminRequest {
        /// The command: `call`.
        public static let command = AdminCommand.call
        /// What the daemon answers: the job's result.
        public typealias Reply = Value
        /// The job.
        public var job: String
        /// Its argument.
        public var argument: Value
        /// The call's deadline in milliseconds, clamped to 0 … one day. Absent, the daemon
        /// applies its own default (the hub's, 10 s).
        public var timeoutMilliseconds: Int64?

        /// A call of `job`.
        public init(job: String, argument: Value = .nil, timeoutMilliseconds: Int64? = nil) {
            self.job = job
            self.argument = argument
            self.timeoutMilliseconds = timeoutMilliseconds
        }

        enum CodingKeys: String, CodingKey {
            case job, argument
            case timeoutMilliseconds = "timeout_ms"
        }

        /// Decodes a call; no `argument` is nil.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            job = try c.decode(String.self, forKey: .job)
            argument = try c.decodeIfPresent(Value.self, forKey: .argument) ?? .nil
            timeoutMilliseconds = try c.decodeIfPresent(Int64.self, forKey: .timeoutMilliseconds)
        }
    }

    /// `endpoints`: the jobs and who serves them.
    public struct Endpoints: AdminRequest {
        /// The command: `endpoints`.
        public static let command = AdminCommand.endpoints
        /// What the daemon answers: one row per job.
        public typealias Reply = [EndpointRow]
        /// The request has no fields.
        public init() {}
    }

    /// A job and its owner, or an extension point and one of its providers.
    public struct EndpointRow: Codable, Sendable, Hashable {
        /// The job or extension point.
        public var job: String
        /// The plugin that serves it.
        public var owner: String
        /// Its owner is restarting: calls wait for it.
        public var restarting: Bool
        /// "job", or "provider" for an extension point's provider.
        public var kind: String
        /// A provider's priority.
        public var priority: Int?
        /// A provider's rank among the point's providers: 1 is the best.
        public var rank: Int?
        /// A row.
        public init(job: String, owner: String, restarting: Bool, kind: String = "job", priority: Int? = nil, rank: Int? = nil) {
            self.job = job
            self.owner = owner
            self.restarting = restarting
            self.kind = kind
            self.priority = priority
            self.rank = rank
        }
    }

    /// `hooks`: the hooks, in the order they run.
    public struct Hooks: AdminRequest {
        /// The command: `hooks`.
        public static let command = AdminCommand.hooks
        /// What the daemon answers: one row per hook registration, in the order they run.
        public typealias Reply = [HookRow]
        /// The request has no fields.
        public init() {}
    }

    /// One hook registration.
    public struct HookRow: Codable, Sendable, Hashable {
        /// The event.
        public var event: String
        /// validate, mutate or observe.
        public var phase: String
        /// The plugin.
        public var owner: String
        /// Its priority (higher runs first).
        public var priority: Int
        /// required or optional.
        public var policy: String
        /// Its timeout for people: `2s`, `150ms` (Chan's `Duration.short`).
        public var timeout: String
        /// Its timeout in milliseconds, for programs (absent from daemons before 0.1.0).
        public var timeoutMilliseconds: Int64?
        /// A row.
        public init(event: String, phase: String, owner: String, priority: Int, policy: String, timeout: String, timeoutMilliseconds: Int64? = nil) {
            self.event = event
            self.phase = phase
            self.owner = owner
            self.priority = priority
            self.policy = policy
            self.timeout = timeout
            self.timeoutMilliseconds = timeoutMilliseconds
        }

        enum CodingKeys: String, CodingKey {
            case event, phase, owner, priority, policy, timeout
            case timeoutMilliseconds = "timeout_ms"
        }
    }

    /// `pipeline`: the pipeline's registrations, in order.
    public struct Pipeline: AdminRequest {
        /// The command: `pipeline`.
        public static let command = AdminCommand.pipeline
        /// What the daemon answers: one row per registration, in order.
        public typealias Reply = [PipelineRow]
        /// The request has no fields.
        public init() {}
    }

    /// One pipeline registration.
    public struct PipelineRow: Codable, Sendable, Hashable {
        /// The message type.
        public var type: String
        /// The plugin.
        public var owner: String
        /// Its priority (higher runs first).
        public var priority: Int
        /// A row.
        public init(type: String, owner: String, priority: Int) {
            self.type = type
            self.owner = owner
            self.priority = priority
        }
    }

    /// `events`: subscribes `sink` to the daemon's events until the client stops reading.
    public struct Events: AdminRequest {
        /// The command: `events`.
        public static let command = AdminCommand.events
        /// What the daemon answers at once: "following"; the events then go to `sink`.
        public typealias Reply = String
        /// Where events go.
        public var sink: Sender
        /// Only these types; a trailing `*` matches a prefix. Empty: all.
        public var types: [String]
        /// Only events whose attribute KEY equals VALUE.
        public var attributes: [String: String]
        /// Events buffered for a slow reader before loss records (clamped to 1 … 65536).
        public var buffer: Int64?
        /// Start with the events the daemon keeps whose `seq` is greater than this.
        public var sinceSequence: UInt64?
        /// Start with the events the daemon keeps from no longer ago than this many
        /// milliseconds (clamped to 0 … one day); `since_seq` wins when both are given.
        public var sinceMilliseconds: Int64?

        /// A subscription.
        public init(sink: Sender, types: [String] = [], attributes: [String: String] = [:], buffer: Int64? = nil, sinceSequence: UInt64? = nil, sinceMilliseconds: Int64? = nil) {
            self.sink = sink
            self.types = types
            self.attributes = attributes
            self.buffer = buffer
            self.sinceSequence = sinceSequence
            self.sinceMilliseconds = sinceMilliseconds
        }

        enum CodingKeys: String, CodingKey {
            case sink, types, attributes, buffer
            case sinceSequence = "since_seq"
            case sinceMilliseconds = "since_ms"
        }

        /// Decodes a subscription; no `types` or `attributes` means every event, no `since_*` only new ones.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            sink = try c.decode(Sender.self, forKey: .sink)
            types = try c.decodeIfPresent([String].self, forKey: .types) ?? []
            attributes = try c.decodeIfPresent([String: String].self, forKey: .attributes) ?? [:]
            buffer = try c.decodeIfPresent(Int64.self, forKey: .buffer)
            sinceSequence = try c.decodeIfPresent(UInt64.self, forKey: .sinceSequence)
            sinceMilliseconds = try c.decodeIfPresent(Int64.self, forKey: .sinceMilliseconds)
        }

        /// Encodes the subscription; absent `buffer` and `since_*` stay absent.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(sink, forKey: .sink)
            try c.encode(types, forKey: .types)
            try c.encode(attributes, forKey: .attributes)
            try c.encodeIfPresent(buffer, forKey: .buffer)
            try c.encodeIfPresent(sinceSequence, forKey: .sinceSequence)
            try c.encodeIfPresent(sinceMilliseconds, forKey: .sinceMilliseconds)
        }
    }

    /// `version`: the daemon's release and the protocol it speaks.
    public struct Version: AdminRequest {
        /// The command: `version`.
        public static let command = AdminCommand.version
        /// What the daemon answers: its versions.
        public typealias Reply = VersionInfo
        /// The request has no fields.
        public init() {}
    }

    /// A program's versions: its release and its Chan protocol version.
    public struct VersionInfo: Codable, Sendable, Hashable {
        /// The release (`0.1.0`).
        public var version: String
        /// The Chan protocol version (HELLO's `protocol`).
        public var protocolVersion: Int64
        /// A program's versions.
        public init(version: String, protocolVersion: Int64) {
            self.version = version
            self.protocolVersion = protocolVersion
        }

        /// This build's versions (``PlugboardVersion``).
        public static var current: VersionInfo { VersionInfo(version: PlugboardVersion.release, protocolVersion: PlugboardVersion.protocolVersion) }

        enum CodingKeys: String, CodingKey {
            case version
            case protocolVersion = "protocol"
        }
    }

    /// `pipeline.send`: sends a message into the pipeline as the operator; the reply is the run.
    public struct PipelineSend: AdminRequest {
        /// The command: `pipeline.send`.
        public static let command = AdminCommand.pipelineSend
        /// What the daemon answers: the run, final messages and path.
        public typealias Reply = PipelineRun
        /// The message's type.
        public var type: String
        /// Its body.
        public var body: Value
        /// A message of `type`.
        public init(type: String, body: Value) {
            self.type = type
            self.body = body
        }
    }

    /// What one pipeline run did.
    public struct PipelineRun: Codable, Sendable, Hashable {
        /// A message: its type and body.
        public struct Message: Codable, Sendable, Hashable {
            /// The type.
            public var type: String
            /// The body.
            public var body: Value
            /// A message.
            public init(type: String, body: Value) {
                self.type = type
                self.body = body
            }
        }

        /// One plugin's handling of one message.
        public struct Step: Codable, Sendable, Hashable {
            /// The run it belongs to: 0 is the message sent; each message of another type a
            /// handler returned starts a run of its own.
            public var run: Int
            /// The plugin.
            public var plugin: String
            /// What it received.
            public var input: Message
            /// What it returned.
            public var output: [Message]
            /// A step.
            public init(run: Int, plugin: String, input: Message, output: [Message]) {
                self.run = run
                self.plugin = plugin
                self.input = input
                self.output = output
            }
        }

        /// An optional step that failed and was skipped.
        public struct Skipped: Codable, Sendable, Hashable {
            /// The plugin.
            public var plugin: String
            /// Why its step failed.
            public var reason: String
            /// A skipped step.
            public init(plugin: String, reason: String) {
                self.plugin = plugin
                self.reason = reason
            }
        }

        /// The messages no further plugin wanted, in the order they finished.
        public var final: [Message]
        /// Every step, in the order taken.
        public var path: [Step]
        /// Optional steps that failed and were skipped.
        public var skipped: [Skipped]

        /// A run.
        public init(final: [Message], path: [Step], skipped: [Skipped] = []) {
            self.final = final
            self.path = path
            self.skipped = skipped
        }
    }

    /// Which providers a ``ProviderCall`` asks, and what it answers.
    public protocol ProviderCallMode: Sendable {
        /// What the daemon answers.
        associatedtype Reply: Codable, Sendable
        /// The command.
        static var command: AdminCommand { get }
    }

    /// The best provider, failing over in rank order when a provider goes away: `call.best`.
    public enum BestProvider: ProviderCallMode {
        /// The provider's result.
        public typealias Reply = Value
        /// `call.best`.
        public static let command = AdminCommand.callBest
    }

    /// Every provider, best first: `call.all`.
    public enum AllProviders: ProviderCallMode {
        /// Each provider's answer or error, in rank order.
        public typealias Reply = [ProviderAnswer]
        /// `call.all`.
        public static let command = AdminCommand.callAll
    }

    /// A call of an extension point's providers: `{"point", "argument"}`.
    public struct ProviderCall<Mode: ProviderCallMode>: AdminRequest {
        /// The command: `call.best` or `call.all`.
        public static var command: AdminCommand { Mode.command }
        /// What the daemon answers.
        public typealias Reply = Mode.Reply
        /// The extension point.
        public var point: String
        /// The argument.
        public var argument: Value
        /// Each provider call's deadline in milliseconds, clamped to 0 … one day. Absent,
        /// the daemon applies its own default (the hub's, 10 s).
        public var timeoutMilliseconds: Int64?
        /// A call of `point`'s providers.
        public init(point: String, argument: Value = .nil, timeoutMilliseconds: Int64? = nil) {
            self.point = point
            self.argument = argument
            self.timeoutMilliseconds = timeoutMilliseconds
        }

        enum CodingKeys: String, CodingKey {
            case point, argument
            case timeoutMilliseconds = "timeout_ms"
        }
    }

    /// `call.best`: calls the best provider of an extension point.
    public typealias CallBest = ProviderCall<BestProvider>
    /// `call.all`: calls every provider of an extension point, best first.
    public typealias CallAll = ProviderCall<AllProviders>

    /// One provider's answer to `call.all`.
    public struct ProviderAnswer: Codable, Sendable, Hashable {
        /// An error a provider answered with.
        public struct Failure: Codable, Sendable, Hashable {
            /// Its code.
            public var code: String
            /// What happened.
            public var message: String
            /// A failure.
            public init(code: String, message: String) {
                self.code = code
                self.message = message
            }
        }
        /// The provider.
        public var plugin: String
        /// Its priority.
        public var priority: Int
        /// Its result, when it answered.
        public var ok: Value?
        /// Its error, when it failed.
        public var error: Failure?
        /// An answer.
        public init(plugin: String, priority: Int, ok: Value?, error: Failure?) {
            self.plugin = plugin
            self.priority = priority
            self.ok = ok
            self.error = error
        }
    }
}
