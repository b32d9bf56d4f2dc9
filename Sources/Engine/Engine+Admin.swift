import Chan
import Containers
import Hooks
import Pipeline
import Routing

/// What an operator can do to a running engine (the admin socket calls these).
extension Engine {
    private func supervisor(_ name: String) throws -> PluginSupervisor {
        guard let s = supervisorList.first(where: { $0.name == name })?.supervisor else {
            throw EngineError(.unknownPlugin, "no plugin named \(name); the plugins are: \(supervisorList.map(\.name).joined(separator: ", "))")
        }
        return s
    }

    /// Adds and starts a plugin while the engine runs. Its requirements must already be met.
    ///
    /// A name being added is claimed first: a second add of it is refused at once, and an
    /// add that fails leaves nothing behind (its process stopped, its name free).
    public func add(_ spec: PluginSpec, grace: Duration = .seconds(5)) async throws -> PluginStatus {
        if let name = spec.name {
            if let problem = Names.problem(withPluginName: name, allowReserved: spec.openToAll) { throw EngineError(.badName, problem) }
            try claim(name)
        }
        var claimed = spec.name
        defer { if let claimed { release(claimed) } }
        var adopted = false
        if let removed = spec.adoptState {
            guard let name = spec.name else { throw EngineError(.badSetting, "--adopt-state needs the plugin's name") }
            guard let custody = stateCustody.withLockedValue({ $0 }) else { throw EngineError(.badSetting, "this engine keeps no plugin state to adopt") }
            do {
                let keys = try await custody.adopt(removed, into: name)
                logger.info("plugin adopts a removed plugin's state", metadata: ["plugin.name": "\(name)", "plugboard.from": "\(removed)", "plugboard.keys": "\(keys)"])
                adopted = true
            } catch let error as EngineError {
                throw error
            } catch {
                throw EngineError(.badSetting, "\(error)")
            }
        }
        do {
            let status = try await addClaimed(spec, claimed: &claimed, grace: grace)
            if let added = spec.addedRecord { await recordChange(.added(name: status.name, spec: added)) }
            return status
        } catch {
            // What it adopted goes back aside: a failed add leaves nothing behind.
            if adopted, let name = spec.name, let custody = stateCustody.withLockedValue({ $0 }) { _ = try? await custody.setAside(name) }
            throw error
        }
    }

    private func addClaimed(_ spec: PluginSpec, claimed: inout String?, grace: Duration) async throws -> PluginStatus {
        let supervisor = PluginSupervisor(spec: spec, provisionalName: spec.name ?? "plugin\(supervisorList.count)", engine: parts)
        // A remote plugin (a reload added it) is listed away and waited for, not started.
        if spec.isRemote, let name = spec.name {
            await supervisor.beginRemote()
            appendSupervisor(name, supervisor)
            return await supervisor.status
        }
        // A launch that fails has stopped what it started.
        let description = try await supervisor.launch()
        let name = await supervisor.name
        if claimed == nil {
            // It named itself: claim that name now.
            do {
                if let problem = Names.problem(withPluginName: name) { throw EngineError(.badName, problem) }
                try claim(name)
                claimed = name
            } catch {
                await supervisor.stop(grace: .zero)
                throw error
            }
        }
        do {
            return try await operations.withGate(name) {
                let provided = Set(hub.endpoints.map(\.name))
                if let missing = description.requires.first(where: { !provided.contains($0) }) {
                    throw EngineError(.bootOrder, "plugin \(name) requires job \(missing), which no plugin provides")
                }
                try await supervisor.activate()
                appendSupervisor(name, supervisor)
                return await supervisor.status
            }
        } catch {
            await supervisor.stop(grace: grace)
            throw error
        }
    }

    /// Claims `name` for an add in progress; throws when a plugin has it or another add
    /// claimed it.
    private func claim(_ name: String) throws {
        let existing = Set(supervisorList.map(\.name))
        let ok = claimedNames.withLockedValue { claimed -> Bool in
            guard !claimed.contains(name), !existing.contains(name) else { return false }
            claimed.insert(name)
            return true
        }
        guard ok else { throw EngineError(.duplicateName, "a plugin named \(name) already exists (or is being added)") }
    }

    private func release(_ name: String) {
        _ = claimedNames.withLockedValue { $0.remove(name) }
    }

    /// Plugins whose `requires` name one of `name`'s jobs, and that are not themselves off.
    public func dependents(of name: String) async -> [String] {
        guard let jobs = try? await supervisor(name).description?.jobs else { return [] }
        var result: [String] = []
        for (other, s) in supervisorList where other != name {
            let status = await s.status
            guard status.state != .disabled, status.state != .stopped, status.state != .failed else { continue }
            if let requires = status.description?.requires, requires.contains(where: jobs.contains) { result.append(other) }
        }
        return result
    }

    /// Throws ``EngineError/Code/inUse`` when an active plugin requires `name`, unless `force`.
    private func refuseIfRequired(_ name: String, force: Bool, to verb: String) async throws {
        let needing = await dependents(of: name)
        if !needing.isEmpty && !force {
            throw EngineError(.inUse, "plugin \(name) is required by \(needing.joined(separator: ", ")); use --force to \(verb) it anyway")
        }
    }

    /// Stops `name` and marks it disabled; refused while an active plugin requires it, unless `force`.
    public func disable(_ name: String, force: Bool = false, grace: Duration = .seconds(5)) async throws {
        try await operations.withGate(name) {
            let s = try supervisor(name)
            try await refuseIfRequired(name, force: force, to: "disable")
            await s.disable(grace: grace)
            await recordChange(.disabled(name: name))
        }
    }

    /// Starts a disabled plugin again.
    public func enable(_ name: String) async throws {
        try await operations.withGate(name) {
            try await supervisor(name).enable()
            await recordChange(.enabled(name: name))
        }
    }

    /// Restarts `name` now, clearing a crash loop.
    public func restart(_ name: String, grace: Duration = .seconds(5)) async throws {
        try await operations.withGate(name) { try await supervisor(name).restartNow(grace: grace) }
    }

    /// Stops and forgets `name`; refused while an active plugin requires it, unless `force`.
    public func remove(_ name: String, force: Bool = false, grace: Duration = .seconds(5)) async throws {
        try await operations.withGate(name) {
            let s = try supervisor(name)
            try await refuseIfRequired(name, force: force, to: "remove")
            await s.stop(grace: grace)
            await s.release()
            removeSupervisor(name)
            if await s.spec.image != nil, case .container(let bundle) = await s.spec.kind { removeImageBundle(bundle) }
            await recordChange(.removed(name: name))
            // Its state is its own: set aside, not inherited by the next plugin of this name.
            if let custody = stateCustody.withLockedValue({ $0 }) {
                do {
                    let keys = try await custody.setAside(name)
                    if keys > 0 { logger.info("removed plugin's state set aside", metadata: ["plugin.name": "\(name)", "plugboard.keys": "\(keys)"]) }
                } catch {
                    logger.error("removed plugin's state could not be set aside", metadata: ["plugin.name": "\(name)", "plugin.error": "\(error)"])
                }
            }
        }
    }

    /// Changes how `name` is supervised (restart policy, backoff, start timeout, crash-loop limit).
    public func set(_ name: String, _ settings: [String: String]) async throws {
        try await operations.withGate(name) {
            try await supervisor(name).apply(settings)
            await recordChange(.set(name: name, settings: settings))
        }
    }

    /// Lets `name` call `jobs` through the engine, and grants a container plugin
    /// `privileges` (they apply from its next start).
    public func grant(_ name: String, jobs: [String], privileges: [Privilege] = []) async throws {
        try await operations.withGate(name) {
            try await supervisor(name).grant(jobs, privileges: privileges)
            await recordChange(.granted(name: name, grants: jobs + privileges.map(\.description)))
        }
    }

    /// Whether plugin `name` holds `grant` (a job it may call, or a token such as
    /// `state:OTHER`): declared in its `calls` and granted at launch, or granted since.
    public func isGranted(_ name: String, _ grant: String) async -> Bool {
        guard let s = try? supervisor(name) else { return false }
        return await s.isGranted(grant)
    }

    /// Everything known about one plugin, for `plugboard plugin inspect`.
    public func inspect(_ name: String) async throws -> Value {
        let s = try supervisor(name)
        let status = await s.status
        let history = await s.history
        let grants = await s.extraGrants
        let privileges = await s.extraPrivileges
        let containerID = await s.containerID
        let spec = await s.spec
        let resources = await s.resources
        let hookPrivileges = await s.hookPrivileges
        let hooks = self.hooks.allRegistrations.filter { $0.owner == name }
        let pipeline = self.pipeline.allRegistrations.filter { $0.owner == name }
        let command: Value
        switch spec.kind {
        case .builtin: command = .fields(("builtin", .string(name)), ("options", .string(spec.options)))
        case .exec(let c, let args): command = .fields(("exec", .string(c)), ("arguments", .array(args.map { .string($0) })), ("options", .string(spec.options)))
        case .container(let bundle):
            let manifest = try? PluginManifest.load(bundle: bundle)
            command = .fields(
                ("container", .string(bundle)), ("runc_id", containerID.map { .string($0) } ?? .nil),
                ("entrypoint", .array((manifest?.entrypoint ?? []).map { .string($0) })),
                ("privileges_asked", .array((manifest?.requestedPrivileges ?? []).map { .string($0.description) })),
                ("privileges_granted", spec.grantAllPrivileges ? "all" : .array(spec.privileges.union(privileges).sorted().map { .string($0.description) })),
                ("options", .string(spec.options)),
                ("image", spec.image.map { .string($0.reference) } ?? .nil),
                ("digest", spec.image.map { .string($0.digest) } ?? .nil),
                ("manifest", manifest.flatMap { try? ValueEncoder().encode($0) } ?? .nil)
            )
        case .remote(let access):
            command = .fields(
                ("remote", .string(status.peer ?? "not connected")),
                ("allowed_uids", .array(access.uids.sorted().map { .int(Int64($0)) })),
                ("allowed_gids", .array(access.gids.sorted().map { .int(Int64($0)) })),
                ("certificate_names", .array(access.allowedCertificateNames(for: name).map { .string($0) })),
                ("options", .string(spec.options))
            )
        }
        return .fields(
            ("name", .string(name)),
            ("kind", .string(status.kind)),
            ("state", .string(status.state.rawValue)),
            ("pid", status.pid.map { .int(Int64($0)) } ?? .nil),
            ("restarts", .int(Int64(status.restarts))),
            ("version", .string(status.description?.version ?? "")),
            ("command", command),
            ("restart_policy", .string(spec.restartPolicy.rawValue)),
            ("backoff", .fields(("initial", .string("\(spec.backoff.initial)")), ("maximum", .string("\(spec.backoff.maximum)")), ("reset_after", .string("\(spec.backoff.resetAfter)")))),
            ("registrations", .fields(
                ("jobs", .array((status.description?.jobs ?? []).map { .string($0) })),
                ("hooks", .array(hooks.map { .fields(("event", .string($0.event)), ("phase", .string($0.phase.rawValue)), ("priority", .int(Int64($0.priority))), ("policy", .string($0.policy.rawValue)), ("timeout", .string("\($0.timeout)"))) })),
                ("pipeline", .array(pipeline.map { .fields(("type", .string($0.type)), ("priority", .int(Int64($0.priority)))) }))
            )),
            ("requires", .array((status.description?.requires ?? []).map { .string($0) })),
            ("permissions", .fields(
                ("asked", .array((status.description?.calls ?? []).map { .string($0) })),
                ("granted_all_asked", .bool(spec.grantAll)),
                ("granted", .array(grants.sorted().map { .string($0) }))
            )),
            ("hook_privileges", .fields(
                ("asked", .array((status.description?.hookPrivileges ?? []).map { .string($0) })),
                ("granted", .array(hookPrivileges.map(\.description).sorted().map { .string($0) }))
            )),
            ("resources", .fields(
                ("limits", .fields(
                    ("memory_bytes", resources.limits.memoryBytes.map { .int($0) } ?? .nil),
                    ("pids", resources.limits.pids.map { .int($0) } ?? .nil),
                    ("cpus", resources.limits.cpus.map { .float($0) } ?? .nil)
                )),
                ("usage", resources.usage.map { u in .fields(
                    ("memory_bytes", u.memoryBytes.map { .int($0) } ?? .nil), ("pids", u.pids.map { .int($0) } ?? .nil), ("oom_kills", .int(u.oomKills))
                ) } ?? .nil),
                ("cgroup", resources.cgroup.map { .string($0) } ?? .nil)
            )),
            ("history", .array(history.ends.map { .fields(("reason", .string("\($0.reason)")), ("end", .string($0.reason.kind))) }))
        )
    }
}
