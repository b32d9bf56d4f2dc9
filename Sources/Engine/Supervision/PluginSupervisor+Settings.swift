import Containers

/// What an operator changes on a plugin while it runs: settings and grants.
extension PluginSupervisor {
    /// Changes how the plugin is supervised from now on (`plugboard plugin set`).
    func apply(_ settings: [String: String]) throws {
        var next = spec
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) {
            if try next.set(key, value) { continue }
            switch key {
            case _ where key.hasPrefix("priority:"):
                guard let n = Int(value) else { throw EngineError(.badSetting, "\(key) is a whole number, not \(value)") }
                let event = String(key.dropFirst("priority:".count))
                try requireHook(event, key)
                hookOverrides[event, default: (nil, nil)].priority = n
            case _ where key.hasPrefix("timeout:"):
                let event = String(key.dropFirst("timeout:".count))
                try requireHook(event, key)
                hookOverrides[event, default: (nil, nil)].timeout = try Self.duration(key, value)
            case _ where key.hasPrefix("pipeline-priority:"):
                guard let n = Int(value) else { throw EngineError(.badSetting, "\(key) is a whole number, not \(value)") }
                let type = String(key.dropFirst("pipeline-priority:".count))
                guard description?.messageTypes.contains(where: { $0.type == type }) == true else {
                    throw EngineError(.badSetting, "plugin \(name) handles no pipeline type \(type)")
                }
                pipelineOverrides[type] = n
            default:
                throw EngineError(.badSetting, "\(key) cannot be set at run time; settable: memory, pids, cpu, restart-policy, backoff-initial, backoff-max, backoff-reset, start-timeout, crash-loop-restarts, crash-loop-window, priority:EVENT, timeout:EVENT, pipeline-priority:TYPE")
            }
        }
        if next.limits.channels != spec.limits.channels, case .builtin = spec.kind {
            throw EngineError(.badSetting, "plugin \(name) is built in: it has no session whose channels could be limited")
        }
        var cgroupLimits = next.limits
        cgroupLimits.channels = spec.limits.channels
        if cgroupLimits != spec.limits {
            if case .builtin = spec.kind {
                throw EngineError(.badSetting, "plugin \(name) is built in: it runs inside plugboardd and has no process of its own to limit")
            }
            // A container plugin's limits go into its OCI spec (linux.resources) at its next start.
            if case .exec = spec.kind, engine.containment?.isAvailable != true {
                throw EngineError(.badSetting, "resource limits need cgroups, and this plugboardd has none it can write")
            }
            // Applied at once to the running plugin's cgroup, and again at every start.
            try applyToCgroup(next.limits)
        }
        spec = next
        // A running plugin's hooks and pipeline types take the new priorities at once.
        if state == .active { registerHooksAndPipeline() }
    }

    func requireHook(_ event: String, _ key: String) throws {
        guard description?.hooks.contains(where: { $0.event == event }) == true else {
            throw EngineError(.badSetting, "plugin \(name) has no hook for \(event) (\(key))")
        }
    }

    /// "250ms", "2s", "1m", at most ``Duration/longestAccepted`` (one day).
    static func duration(_ key: String, _ text: String) throws -> Duration {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000)]
        let longest = Duration.longestAccepted.saturatingMilliseconds
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let n = Int64(text.dropLast(suffix.count)), n >= 0 else { continue }
            guard n <= longest / scale else {
                throw EngineError(.badSetting, "\(key) is at most one day (86400s), not \(text)")
            }
            return .milliseconds(n * scale)
        }
        throw EngineError(.badSetting, "\(key) is a duration like 250ms, 2s or 1m, not \(text)")
    }

    func grant(_ jobs: [String], privileges: [Privilege] = []) throws {
        for token in jobs {
            if let problem = Grants.problem(with: token) { throw EngineError(.badSetting, problem) }
        }
        extraGrants.formUnion(jobs.map { $0.hasPrefix("hook:") ? "hook:" + (HookPrivilege(String($0.dropFirst(5)))?.description ?? "") : $0 })
        extraPrivileges.formUnion(privileges)
    }

    /// What its hooks may change: the hook privileges it declared, when it was given all it
    /// asked for (the command line, `--grant-all-permissions`), and those granted since
    /// (`plugboard plugin grant NAME hook:mount=/srv/data`).
    var hookPrivileges: Set<HookPrivilege> {
        var granted = Set(extraGrants.filter { $0.hasPrefix("hook:") }.compactMap { HookPrivilege(String($0.dropFirst(5))) })
        if spec.grantAll { granted.formUnion((description?.hookPrivileges ?? []).compactMap(HookPrivilege.init)) }
        return granted
    }

    func isGranted(_ job: String) -> Bool {
        (spec.grantAll && (description?.calls.contains(job) ?? false)) || extraGrants.contains(job)
    }
}

extension PluginSpec {
    /// A duration setting's value: `250ms`, `2s`, `1m`, at most one day.
    public func duration(_ text: String, for key: String) throws -> Duration {
        try PluginSupervisor.duration(key, text)
    }

    /// The settings a spec carries itself, as `plugin set` and a config file give them.
    public static let settingKeys: [String] = [
        "restart-policy", "backoff-initial", "backoff-max", "backoff-reset", "start-timeout", "crash-loop-restarts", "crash-loop-window",
        "memory", "pids", "cpu", "channels",
    ]

    /// Sets `key` from its text, checked: `restart-policy=always`, `backoff-max=30s`,
    /// `memory=256M`, … Returns false for a key that is not one of ``settingKeys``.
    public mutating func set(_ key: String, _ value: String) throws -> Bool {
        switch key {
        case "restart-policy":
            guard let policy = RestartPolicy(rawValue: value) else {
                throw EngineError(.badSetting, "restart-policy is always, on-failure or never, not \(value)")
            }
            restartPolicy = policy
        case "backoff-initial": backoff.initial = try PluginSupervisor.duration(key, value)
        case "backoff-max": backoff.maximum = try PluginSupervisor.duration(key, value)
        case "backoff-reset": backoff.resetAfter = try PluginSupervisor.duration(key, value)
        case "start-timeout": startTimeout = try PluginSupervisor.duration(key, value)
        case "crash-loop-restarts":
            guard let n = Int(value), n >= 0 else { throw EngineError(.badSetting, "crash-loop-restarts is a count, not \(value)") }
            crashLoop.restarts = n
        case "crash-loop-window": crashLoop.window = try PluginSupervisor.duration(key, value)
        case _ where ResourceLimits.keys.contains(key):
            try limits.set(key, value)
        default:
            return false
        }
        return true
    }
}
