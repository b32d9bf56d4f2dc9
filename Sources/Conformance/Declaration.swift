import Chan
import Routing

/// Something of the plugin's the kit calls: a job, an extension point, a hook or a
/// pipeline message type.
struct Target: Sendable {
    enum Kind: Sendable {
        case job
        case provider
        case hook(phase: String)
        case pipeline

        /// The invocation's `kind`.
        var wireKind: String {
            switch self {
            case .job, .provider: return "job"
            case .hook: return "hook"
            case .pipeline: return "pipeline"
            }
        }

        /// What is wrong with an `ok` answer of this kind (PROTOCOL.md, Routing calls).
        func problem(withAnswer value: Value) -> String? {
            switch self {
            case .job, .provider:
                return nil
            case .hook(let phase):
                if let veto = value["veto"] {
                    return veto.stringValue == nil ? "vetoed with \(veto.brief), not a string reason" : nil
                }
                guard phase == "mutate" else { return nil }
                guard case .map = value, value["payload"] != nil else {
                    return "a mutating hook answered \(value.brief); it answers {\"payload\": NEW} or {\"veto\": REASON}"
                }
                return nil
            case .pipeline:
                guard let messages = value.arrayValue else {
                    return "a pipeline handler answered \(value.brief); it answers a list of messages [{\"type\", \"body\"}]"
                }
                for message in messages where message["type"]?.stringValue == nil || message["body"] == nil {
                    return "a pipeline handler answered a message \(message.brief) without a string \"type\" and a \"body\""
                }
                return nil
            }
        }
    }

    var name: String
    var kind: Kind

    /// The case's name: `job.NAME`, `provider.POINT`, `hook.EVENT.PHASE`, `pipeline.TYPE`.
    var caseName: String {
        switch kind {
        case .job: return "job.\(name)"
        case .provider: return "provider.\(name)"
        case .hook(let phase): return "hook.\(name).\(phase)"
        case .pipeline: return "pipeline.\(name)"
        }
    }

    /// A valid payload: the container spec for `container.create`/`.start` hooks, the
    /// observers' `{"id", "name"}` for the container events, a `container.log` message for
    /// that type, nil for jobs, `{}` for any other hook, a string for other message types.
    var samplePayload: Value {
        switch kind {
        case .job, .provider:
            return .nil
        case .hook:
            switch name {
            case "container.create", "container.start":
                return .fields(
                    ("name", "conformance"), ("rootfs", "/var/lib/plugboard/rootfs/conformance"), ("hostname", "conformance"),
                    ("workdir", "/"), ("args", ["/bin/true"]), ("env", ["PATH=/usr/bin:/bin"]),
                    ("labels", .fields(("app", "conformance"))),
                    ("mounts", [.fields(("source", "proc"), ("destination", "/proc"), ("type", "proc"), ("options", .array([])))])
                )
            case "container.exited":
                return .fields(("id", "conformance-0001"), ("name", "conformance"), ("exit_code", 0))
            case "container.started", "container.removed":
                return .fields(("id", "conformance-0001"), ("name", "conformance"))
            default:
                return .map([])
            }
        case .pipeline:
            if name == "container.log" {
                return .fields(("id", "conformance-0001"), ("stream", "stdout"), ("line", "hello from the conformance kit"), ("time", "2026-01-01T00:00:00Z"))
            }
            return "hello from the conformance kit"
        }
    }
}

/// A plugin's declaration (its HELLO `meta`), checked against PROTOCOL.md, "The plugin
/// declaration", with the defaults applied.
struct Declaration: Sendable {
    var name: String
    var version: String
    var jobs: [String] = []
    var hooks: [(event: String, phase: String, priority: Int64, timeoutMS: Int64, policy: String, overrides: Bool)] = []
    var pipeline: [(type: String, priority: Int64, timeoutMS: Int64, policy: String)] = []
    var provides: [(point: String, priority: Int64)] = []
    var requires: [String] = []
    var calls: [String] = []
    var defaulted: [String] = []

    /// Everything the kit calls, in declaration order: jobs, points, hooks, pipeline types.
    var targets: [Target] {
        jobs.map { Target(name: $0, kind: .job) }
            + provides.map { Target(name: $0.point, kind: .provider) }
            + hooks.map { Target(name: $0.event, kind: .hook(phase: $0.phase)) }
            + pipeline.map { Target(name: $0.type, kind: .pipeline) }
    }

    /// One line: what it registers.
    var summary: String {
        func count(_ n: Int, _ what: String) -> String { "\(n) \(what)\(n == 1 ? "" : "s")" }
        var text = "\(name) \(version): \(count(jobs.count, "job")), \(count(hooks.count, "hook")), \(count(pipeline.count, "pipeline type")), \(count(provides.count, "extension point"))"
        if !calls.isEmpty { text += ", calls \(calls.joined(separator: " "))" }
        if !defaulted.isEmpty { text += "; defaults: \(defaulted.joined(separator: ", "))" }
        return text
    }

    /// Checks `meta`; throws ``Failure`` naming the first rule it breaks. `givenName` is
    /// `PLUGBOARD_PLUGIN_NAME`, which makes the declared name optional.
    init(_ meta: Value, givenName: String?) throws(Failure) {
        guard case .map(let entries) = meta else { throw Failure("its declaration (HELLO meta) is \(meta.brief), not a map") }
        for entry in entries where entry.key.stringValue == nil {
            throw Failure("its declaration has a key \(entry.key.brief) that is not a string")
        }
        func strings(_ key: String, what: String) throws(Failure) -> [String] {
            guard let items = meta[key] else { return [] }
            guard let array = items.arrayValue else { throw Failure("its declaration's \"\(key)\" is \(items.brief), not a list") }
            var names: [String] = []
            for item in array {
                guard let text = item.stringValue else { throw Failure("its declaration's \"\(key)\" holds \(item.brief), not a string") }
                if let problem = Names.problem(withRegistrationName: text, what: what) { throw Failure("its declaration's \"\(key)\": \(problem)") }
                names.append(text)
            }
            return names
        }
        func integer(_ entry: Value, _ key: String, _ fallback: Int64, _ what: String) throws(Failure) -> Int64 {
            guard let field = entry[key] else { return fallback }
            guard let n = field.intValue else { throw Failure("\(what): \"\(key)\" is \(field.brief), not an integer") }
            return n
        }
        func policy(_ entry: Value, _ what: String) throws(Failure) -> String {
            guard let field = entry["policy"] else { return "required" }
            guard let text = field.stringValue, text == "required" || text == "optional" else {
                throw Failure("\(what): \"policy\" is \(field.brief); it is \"required\" or \"optional\"")
            }
            return text
        }
        if let declared = meta["name"] {
            guard let text = declared.stringValue else { throw Failure("its declaration's \"name\" is \(declared.brief), not a string") }
            if let problem = Names.problem(withPluginName: text) { throw Failure("its declaration's name is refused: \(problem)") }
            name = text
        } else if let givenName {
            name = givenName
        } else {
            throw Failure("its declaration has no \"name\" (only the name may not be left out)")
        }
        if let declared = meta["version"] {
            guard let text = declared.stringValue else { throw Failure("its declaration's \"version\" is \(declared.brief), not a string") }
            version = text
        } else {
            version = "unknown"
            defaulted.append("version \"unknown\"")
        }
        jobs = try strings("jobs", what: "job")
        requires = try strings("requires", what: "job")
        calls = try strings("calls", what: "grant")
        if Set(jobs).count != jobs.count { throw Failure("its declaration lists a job twice: \(jobs)") }
        for (key, list) in [("hooks", meta["hooks"]), ("pipeline", meta["pipeline"]), ("provides", meta["provides"])] {
            if let list, list.arrayValue == nil { throw Failure("its declaration's \"\(key)\" is \(list.brief), not a list") }
        }
        for hook in meta["hooks"]?.arrayValue ?? [] {
            guard case .map = hook, let event = hook["event"]?.stringValue else {
                throw Failure("its declaration has a hook \(hook.brief) without a string \"event\"")
            }
            if let problem = Names.problem(withRegistrationName: event, what: "hook event") { throw Failure("its declaration: \(problem)") }
            let what = "its hook on \(event)"
            var phase = "mutate"
            if let field = hook["phase"] {
                guard let text = field.stringValue, ["mutate", "validate", "observe"].contains(text) else {
                    throw Failure("\(what): \"phase\" is \(field.brief); it is \"mutate\", \"validate\" or \"observe\"")
                }
                phase = text
            } else {
                defaulted.append("hook \(event) phase mutate")
            }
            var overrides = false
            if let field = hook["overrides"] {
                guard let b = field.boolValue else { throw Failure("\(what): \"overrides\" is \(field.brief), not a boolean") }
                overrides = b
            }
            let timeout = try integer(hook, "timeout_ms", 2000, what)
            if timeout < 0 { throw Failure("\(what): \"timeout_ms\" is negative") }
            let priority = try integer(hook, "priority", 0, what)
            let hookPolicy = try policy(hook, what)
            hooks.append((event, phase, priority, min(timeout, 86_400_000), hookPolicy, overrides))
        }
        for entry in meta["pipeline"]?.arrayValue ?? [] {
            guard case .map = entry, let type = entry["type"]?.stringValue else {
                throw Failure("its declaration has a pipeline entry \(entry.brief) without a string \"type\"")
            }
            if let problem = Names.problem(withRegistrationName: type, what: "message type") { throw Failure("its declaration: \(problem)") }
            let what = "its pipeline entry for \(type)"
            let timeout = try integer(entry, "timeout_ms", 10000, what)
            if timeout < 0 { throw Failure("\(what): \"timeout_ms\" is negative") }
            let priority = try integer(entry, "priority", 0, what)
            let entryPolicy = try policy(entry, what)
            pipeline.append((type, priority, min(timeout, 86_400_000), entryPolicy))
        }
        for entry in meta["provides"]?.arrayValue ?? [] {
            guard case .map = entry, let point = entry["point"]?.stringValue else {
                throw Failure("its declaration has a \"provides\" entry \(entry.brief) without a string \"point\"")
            }
            if let problem = Names.problem(withRegistrationName: point, what: "extension point") { throw Failure("its declaration: \(problem)") }
            let priority = try integer(entry, "priority", 0, "its provided point \(point)")
            provides.append((point, priority))
        }
        for privilege in try strings("hook_privileges", what: "hook privilege") {
            let path = privilege.hasPrefix("mount=") ? String(privilege.dropFirst(6)) : nil
            guard privilege == "command" || (path?.hasPrefix("/") ?? false) else {
                throw Failure("its declaration's \"hook_privileges\" holds \(privilege); a hook privilege is mount=/HOST/PATH, mount=/HOST/PATH:ro or command")
            }
        }
        if let timeouts = meta["job_timeouts"] {
            guard let map = timeouts.mapValue else { throw Failure("its declaration's \"job_timeouts\" is \(timeouts.brief), not a map") }
            for entry in map where entry.key.stringValue == nil || entry.value.intValue == nil {
                throw Failure("its declaration's \"job_timeouts\" maps \(entry.key.brief) to \(entry.value.brief); it maps job names to milliseconds")
            }
        }
    }

    /// What the kit can still call in a declaration it refused: its jobs and hooks by name.
    static func lenient(_ meta: Value, name: String) -> Declaration {
        var d = Declaration(name: name, version: "unknown")
        d.jobs = (meta["jobs"]?.arrayValue ?? []).compactMap(\.stringValue)
        for hook in meta["hooks"]?.arrayValue ?? [] {
            guard let event = hook["event"]?.stringValue else { continue }
            let phase = hook["phase"]?.stringValue.flatMap { ["mutate", "validate", "observe"].contains($0) ? $0 : nil } ?? "mutate"
            d.hooks.append((event, phase, 0, 2000, "required", false))
        }
        return d
    }

    private init(name: String, version: String) {
        self.name = name
        self.version = version
    }
}
