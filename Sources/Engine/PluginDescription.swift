import Chan
import Containers
import Hooks
import Pipeline
import PluginKit
import Routing

/// What a plugin declared, without its handlers: parsed from HELLO's `meta` for a
/// subprocess, taken from the declaration for a built-in.
public struct PluginDescription: Sendable, Hashable {
    /// A pipeline message type the plugin handles, without its handler.
    public struct MessageType: Sendable, Hashable {
        /// The message type.
        public var type: String
        /// Its priority (higher gets a message first).
        public var priority: Int
        /// How long one call to the handler may take (default 10 s).
        public var timeout: Duration
        /// What its failure means for a run (default required).
        public var policy: Pipeline.StepPolicy = .required
    }

    /// An extension point the plugin provides, with its rank.
    public struct ProvidedPoint: Sendable, Hashable {
        /// The extension point.
        public var point: String
        /// Its priority among providers (higher is better).
        public var priority: Int
    }

    /// The plugin's name: the one it declared, or the engine's name for it when it declared none.
    public var name: String
    /// Its version; "unknown" when a subprocess declared none.
    public var version: String
    /// The jobs it serves.
    public var jobs: [String]
    /// The hooks it registers.
    public var hooks: [HookOptions]
    /// The pipeline message types it handles.
    public var messageTypes: [MessageType]
    /// The extension points it provides.
    public var provides: [ProvidedPoint]
    /// Jobs that must be active before it is (boot order follows them).
    public var requires: [String]
    /// Jobs (and hook chains) it wants to call through the engine; each needs a grant.
    public var calls: [String]
    /// What its hooks need to change (`mount=/srv/data`, `command`); each needs a grant.
    public var hookPrivileges: [String] = []
    /// How long a call to each of these jobs may take when its caller sets no deadline.
    public var jobTimeouts: [String: Duration] = [:]

    init(_ d: PluginDeclaration) {
        name = d.name
        version = d.version
        jobs = d.jobs.map(\.name)
        hooks = d.hooks.map(\.options)
        messageTypes = d.messageTypes.map { MessageType(type: $0.type, priority: $0.priority, timeout: $0.timeout, policy: $0.policy) }
        provides = d.providers.map { ProvidedPoint(point: $0.point, priority: $0.priority) }
        requires = d.requires
        calls = d.calls
        hookPrivileges = d.hookPrivileges
        jobTimeouts = Dictionary(d.jobs.compactMap { job in job.timeout.map { (job.name, $0) } }, uniquingKeysWith: { a, _ in a })
    }

    /// Parses the declaration a plugin sent in HELLO.
    init(wire v: Value, fallbackName: String) throws {
        guard case .map = v else {
            throw EngineError(.badDeclaration, "plugin \(fallbackName) sent no declaration in its HELLO (meta must be a map)")
        }
        func strings(_ key: String) throws -> [String] {
            guard let items = v[key] else { return [] }
            guard let array = items.arrayValue else { throw EngineError(.badDeclaration, "plugin \(fallbackName): \"\(key)\" must be a list") }
            return try array.map { item in
                guard let s = item.stringValue else { throw EngineError(.badDeclaration, "plugin \(fallbackName): \"\(key)\" must hold strings") }
                return s
            }
        }
        name = v["name"]?.stringValue ?? fallbackName
        if let problem = Names.problem(withPluginName: name) {
            throw EngineError(.badDeclaration, "plugin \(fallbackName) declared a name that is refused: \(problem)")
        }
        version = String((v["version"]?.stringValue ?? "unknown").prefix(64))
        jobs = try strings("jobs")
        requires = try strings("requires")
        provides = try (v["provides"]?.arrayValue ?? []).map { p in
            guard let point = p["point"]?.stringValue else {
                throw EngineError(.badDeclaration, "plugin \(fallbackName): a \"provides\" entry lacks \"point\"")
            }
            return ProvidedPoint(point: point, priority: Int(clamping: p["priority"]?.intValue ?? 0))
        }
        calls = try strings("calls")
        hookPrivileges = try strings("hook_privileges")
        for entry in v["job_timeouts"]?.mapValue ?? [] {
            guard let job = entry.key.stringValue, let ms = entry.value.intValue else {
                throw EngineError(.badDeclaration, "plugin \(fallbackName): \"job_timeouts\" maps job names to milliseconds")
            }
            jobTimeouts[job] = .clampedMilliseconds(ms, default: .seconds(10))
        }
        if let bad = hookPrivileges.first(where: { HookPrivilege($0) == nil }) {
            throw EngineError(.badDeclaration, "plugin \(fallbackName): \"hook_privileges\" holds \(bad); a hook privilege is mount=/HOST/PATH, mount=/HOST/PATH:ro or command")
        }
        hooks = try (v["hooks"]?.arrayValue ?? []).map { h in
            do {
                return try HookOptions(wire: h)
            } catch {
                throw EngineError(.badDeclaration, "plugin \(fallbackName): \(error)")
            }
        }
        messageTypes = try (v["pipeline"]?.arrayValue ?? []).map { m in
            guard let type = m["type"]?.stringValue else {
                throw EngineError(.badDeclaration, "plugin \(fallbackName): a pipeline entry lacks \"type\"")
            }
            var policy = Pipeline.StepPolicy.required
            if let text = m["policy"]?.stringValue {
                guard let p = Pipeline.StepPolicy(rawValue: text) else {
                    throw EngineError(.badDeclaration, "plugin \(fallbackName): pipeline type \(type) has policy \(text); it is required or optional")
                }
                policy = p
            }
            return MessageType(type: type, priority: Int(clamping: m["priority"]?.intValue ?? 0), timeout: .clampedMilliseconds(m["timeout_ms"]?.intValue, default: .seconds(10)), policy: policy)
        }
        try checkNames(plugin: fallbackName)
    }

    /// Refuses a declaration whose jobs, points, events, message types or grants are not of
    /// the allowed form (``Names``), naming the first that is not.
    func checkNames(plugin: String) throws {
        let named: [(String, [String])] = [
            ("job", jobs), ("required job", requires), ("extension point", provides.map(\.point)), ("grant", calls),
            ("hook event", hooks.map(\.event)), ("pipeline message type", messageTypes.map(\.type)),
        ]
        for (what, names) in named {
            for n in names {
                if let problem = Names.problem(withRegistrationName: n, what: what) {
                    throw EngineError(.badDeclaration, "plugin \(plugin): \(problem)")
                }
            }
        }
    }
}
