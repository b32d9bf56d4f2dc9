import AdminProtocol
import Chan
import Containers
import Foundation
import Hub
import Pipeline
import Routing

/// The admin commands: each request decoded into its ``AdminRequest`` type, answered by
/// the engine, its reply encoded back. docs/ADMIN.md shows each command's shape.
enum AdminCommands {
    static func answer(_ request: Request, engine: Engine, builtins: @escaping AdminServer.BuiltinLookup) async {
        // A subscription answers at once, then goes on in this task (which the client's
        // session owns) until the client stops reading.
        if request.body["command"]?.stringValue == AdminCommand.events.rawValue {
            do {
                let r = try Admin.Events.decode(request.body)
                let subscription = engine.bus.subscribe(
                    EventFilter(types: r.types, attributes: r.attributes), capacity: EventBus.clampedCapacity(r.buffer), replay: replay(r)
                )
                try? await request.respond(try ValueEncoder().encode("following"))
                await subscription.pump(to: r.sink)
            } catch let error as AdminError {
                try? await request.fail(code: error.code.rawValue, message: error.message)
            } catch {
                try? await request.fail(code: AdminError.Code.failed.rawValue, message: "\(error)")
            }
            return
        }
        do {
            let result = try await run(request.body, engine: engine, builtins: builtins)
            try? await request.respond(result)
        } catch {
            let (code, message) = wireError(error)
            try? await request.fail(code: code, message: message)
        }
    }

    /// Whether `body` is a `call` of a job that a plugin in another process serves: such a
    /// request only forwards and waits, so it may run on the admin session's event loop.
    static func forwardsToAnotherProcess(_ body: Value, engine: Engine) -> Bool {
        guard body["command"]?.stringValue == AdminCommand.call.rawValue, let job = body["job"]?.stringValue else { return false }
        return engine.hub.isServedRemotely(job)
    }

    /// A `call` body read without the Codable machinery: `job` a string, `argument` any
    /// value, `timeout_ms` an integer or absent, other keys ignored (as ValueDecoder does).
    /// nil for anything else (a key twice, a wrong type): the caller decodes it the long
    /// way, which says what is wrong.
    static func directCall(_ body: Value) -> Admin.Call? {
        guard case .map(let entries) = body else { return nil }
        var job: String?
        var argument: Value?
        var timeout: Int64??
        for (key, value) in entries {
            guard case .string(let name) = key else { return nil }
            switch name {
            case "job":
                guard job == nil, case .string(let s) = value else { return nil }
                job = s
            case "argument":
                guard argument == nil else { return nil }
                argument = value
            case "timeout_ms":
                guard timeout == nil else { return nil }
                switch value {
                case .int(let i): timeout = .some(i)
                case .uint(let u) where u <= UInt64(Int64.max): timeout = .some(Int64(u))
                case .nil: timeout = .some(nil)
                default: return nil
                }
            default:
                continue
            }
        }
        guard let job else { return nil }
        return Admin.Call(job: job, argument: argument ?? .nil, timeoutMilliseconds: timeout ?? nil)
    }

    /// Decodes `body` as `R`, answers it with `handle`, and encodes the reply.
    static func typed<R: AdminRequest>(_ type: R.Type, _ body: Value, _ handle: (R) async throws -> R.Reply) async throws -> Value {
        let reply = try await handle(try R.decode(body))
        // A reply that is already a Value (call, call.best, plugin.inspect) goes as it is: no
        // second encoding on the admin call path.
        if let value = reply as? Value { return value }
        return try ValueEncoder().encode(reply)
    }

    static func run(_ body: Value, engine: Engine, builtins: @escaping AdminServer.BuiltinLookup) async throws -> Value {
        guard let name = body["command"]?.stringValue else {
            throw AdminError(.badRequest, "an admin request is a map with a \"command\"")
        }
        guard let command = AdminCommand(rawValue: name) else {
            throw AdminError(.unknownCommand, "unknown admin command \(name); the commands are: \(AdminCommand.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        switch command {
        case .pluginList:
            return try await typed(Admin.PluginList.self, body) { _ in await pluginRows(engine) }
        case .pluginInspect:
            return try await typed(Admin.PluginInspect.self, body) { await readableDurations(try await engine.inspect($0.name), of: $0.name, engine) }
        case .pluginRestart:
            return try await typed(Admin.PluginRestart.self, body) { try await engine.restart($0.name); return "restarted" }
        case .pluginDisable:
            return try await typed(Admin.PluginDisable.self, body) { try await engine.disable($0.name, force: $0.force); return "disabled" }
        case .pluginEnable:
            return try await typed(Admin.PluginEnable.self, body) { try await engine.enable($0.name); return "enabled" }
        case .pluginRemove:
            return try await typed(Admin.PluginRemove.self, body) { r in
                try await engine.remove(r.name, force: r.force)
                engine.bus.publish("plugin.removed", [("plugin", .string(r.name)), ("forced", .bool(r.force)), ("source", "operator")])
                return "removed"
            }
        case .pluginSet:
            return try await typed(Admin.PluginSet.self, body) { r in
                try await engine.set(r.name, r.settings)
                let settings: Value = .map(r.settings.sorted { $0.key < $1.key }.map { (key: .string($0.key), value: .string($0.value)) })
                engine.bus.publish("plugin.set", [("plugin", .string(r.name)), ("settings", settings), ("source", "operator")])
                return "set"
            }
        case .pluginGrant:
            return try await typed(Admin.PluginGrant.self, body) { r in
                // Privileges (network=host, mount=..., capability=..., device=...) and jobs share the list.
                let privileges = r.jobs.compactMap(Privilege.init)
                let jobs = r.jobs.filter { Privilege($0) == nil }
                try await engine.grant(r.name, jobs: jobs, privileges: privileges)
                engine.bus.publish("plugin.granted", [("plugin", .string(r.name)), ("grants", .array(r.jobs.map { .string($0) })), ("source", "operator")])
                return "granted"
            }
        case .pluginAdd:
            return try await typed(Admin.PluginAdd.self, body) { r in
                // The engine publishes each state a plugin passes through; whether the
                // operator's add as a whole worked is said here, where the request is known.
                let kind = r.exec != nil ? "exec" : r.builtin != nil ? "builtin" : r.container != nil ? "container" : "-"
                do {
                    let status = try await engine.add(try spec(for: r, builtins: builtins))
                    engine.bus.publish("plugin.added", [("plugin", .string(r.name)), ("kind", .string(kind)), ("state", .string(status.state.rawValue)), ("source", "operator")])
                    return Admin.PluginAdded(name: status.name, state: status.state.rawValue)
                } catch {
                    let (code, message) = wireError(error)
                    engine.bus.publish("plugin.add-failed", [
                        ("plugin", .string(r.name)), ("kind", .string(kind)), ("code", .string(code)), ("error", .string(message)), ("source", "operator"),
                    ])
                    throw error
                }
            }
        case .pluginInstall, .pluginUpgrade:
            return try await ImageAdminCommands.run(command, body, engine: engine)
        case .call:
            // The hot path reads the call's fields straight from the map: the Codable walk
            // (ValueDecoder) was 5 % of the daemon's samples per forwarded call. A body that
            // is not plainly shaped goes through Admin.Call.decode, and its errors.
            let r = try directCall(body) ?? Admin.Call.decode(body)
            // The caller's deadline; else the one the job declared; else the engine's default.
            let timeout = r.timeoutMilliseconds.map { Duration.clampedMilliseconds($0, default: Hub.defaultTimeout) }
                ?? engine.hub.declaredTimeout(of: r.job) ?? Hub.defaultTimeout
            return try await engine.hub.call(r.job, r.argument, timeout: timeout)
        case .version:
            return try await typed(Admin.Version.self, body) { _ in Admin.VersionInfo.current }
        case .endpoints:
            return try await typed(Admin.Endpoints.self, body) { _ in
                let jobs = engine.hub.endpoints.map { Admin.EndpointRow(job: $0.name, owner: $0.owner, restarting: $0.restarting) }
                var rank: [String: Int] = [:]
                let providers = engine.hub.allProviders.map { p -> Admin.EndpointRow in
                    rank[p.extensionPoint, default: 0] += 1
                    return Admin.EndpointRow(job: p.extensionPoint, owner: p.owner, restarting: false, kind: "provider", priority: p.priority, rank: rank[p.extensionPoint])
                }
                return jobs + providers
            }
        case .callBest:
            return try await typed(Admin.CallBest.self, body) { r in
                try await engine.hub.callBest(r.point, r.argument, timeout: .clampedMilliseconds(r.timeoutMilliseconds, default: Hub.defaultTimeout))
            }
        case .callAll:
            return try await typed(Admin.CallAll.self, body) { r in
                try await engine.hub.callAll(r.point, r.argument, timeout: .clampedMilliseconds(r.timeoutMilliseconds, default: Hub.defaultTimeout)).map { a in
                    switch a.result {
                    case .success(let v): return Admin.ProviderAnswer(plugin: a.plugin, priority: a.priority, ok: v, error: nil)
                    case .failure(let e): return Admin.ProviderAnswer(plugin: a.plugin, priority: a.priority, ok: nil, error: .init(code: e.wireCode, message: e.reason))
                    }
                }
            }
        case .hooks:
            return try await typed(Admin.Hooks.self, body) { _ in
                engine.hooks.allRegistrations.map {
                    Admin.HookRow(
                        event: $0.event, phase: $0.phase.rawValue, owner: $0.owner, priority: $0.priority, policy: $0.policy.rawValue,
                        timeout: $0.timeout.short, timeoutMilliseconds: $0.timeout.saturatingMilliseconds
                    )
                }
            }
        case .pipeline:
            return try await typed(Admin.Pipeline.self, body) { _ in
                engine.pipeline.allRegistrations.map { Admin.PipelineRow(type: $0.type, owner: $0.owner, priority: $0.priority) }
            }
        case .pipelineSend:
            return try await typed(Admin.PipelineSend.self, body) { r in
                let result = try await engine.pipeline.route(PipelineMessage(type: r.type, body: r.body))
                func message(_ m: PipelineMessage) -> Admin.PipelineRun.Message { .init(type: m.type, body: m.body) }
                return Admin.PipelineRun(
                    final: result.final.map(message),
                    path: result.path.map { .init(run: $0.run, plugin: $0.plugin, input: message($0.input), output: $0.output.map(message)) },
                    skipped: result.skipped.map { .init(plugin: $0.plugin, reason: $0.reason) }
                )
            }
        case .events:
            throw AdminError(.badRequest, "events is answered by the session that subscribes, not here")
        }
    }

    /// Where a subscription starts: `since_seq` wins over `since_ms`; neither, now.
    static func replay(_ r: Admin.Events) -> EventReplay {
        if let seq = r.sinceSequence { return .afterSequence(seq) }
        if let ms = r.sinceMilliseconds { return .within(.clampedMilliseconds(ms)) }
        return .none
    }

    /// An error's wire code and message, as ``answer(_:engine:builtins:)`` sends them.
    static func wireError(_ error: any Error) -> (code: String, message: String) {
        switch error {
        case let e as AdminError: return (e.code.rawValue, e.message)
        case let e as EngineError: return (AdminError.Code.engine("\(e.code)").rawValue, e.reason)
        case let e as RoutingError: return (e.wireCode, e.reason)
        default: return (AdminError.Code.failed.rawValue, "\(error)")
        }
    }

    /// `plugin.inspect` with its durations for people (`100ms`, `30s`, Chan's `Duration.short`)
    /// instead of Swift's descriptions (`0.1 seconds`): the backoff, and each hook's timeout.
    static func readableDurations(_ inspected: Value, of name: String, _ engine: Engine) async -> Value {
        guard case .map(var entries) = inspected else { return inspected }
        if let supervisor = engine.supervisorList.first(where: { $0.name == name })?.supervisor,
           let i = entries.firstIndex(where: { $0.key == "backoff" }) {
            let backoff = await supervisor.spec.backoff
            entries[i].value = .fields(
                ("initial", .string(backoff.initial.short)), ("maximum", .string(backoff.maximum.short)), ("reset_after", .string(backoff.resetAfter.short))
            )
        }
        if let i = entries.firstIndex(where: { $0.key == "registrations" }), case .map(var registrations) = entries[i].value,
           let h = registrations.firstIndex(where: { $0.key == "hooks" }), let shown = registrations[h].value.arrayValue {
            // The same registrations in the same order as inspect listed them; each row's
            // timeout is replaced where the event and phase agree.
            let hooks = engine.hooks.allRegistrations.filter { $0.owner == name }
            registrations[h].value = .array(shown.enumerated().map { j, row in
                guard j < hooks.count, case .map(var fields) = row, row["event"]?.stringValue == hooks[j].event,
                      row["phase"]?.stringValue == hooks[j].phase.rawValue,
                      let t = fields.firstIndex(where: { $0.key == "timeout" }) else { return row }
                fields[t].value = .string(hooks[j].timeout.short)
                return .map(fields)
            })
            entries[i].value = .map(registrations)
        }
        return .map(entries)
    }

    static func pluginRows(_ engine: Engine) async -> [Admin.PluginRow] {
        let images = await engine.imageOrigins()
        return await engine.status().map { s in
            let registrations = (s.description?.jobs.count ?? 0) + (s.description?.hooks.count ?? 0) + (s.description?.messageTypes.count ?? 0)
            var row = Admin.PluginRow(
                name: s.name, kind: s.kind, state: s.state.rawValue, pid: s.pid.map { Int64($0) }, restarts: s.restarts,
                uptimeSeconds: s.uptime.map { ($0 * 10).rounded() / 10 }, registrations: registrations, peer: s.peer
            )
            row.image = images[s.name]?.reference
            row.digest = images[s.name]?.digest
            return row
        }
    }

    static func spec(for r: Admin.PluginAdd, builtins: AdminServer.BuiltinLookup) throws -> PluginSpec {
        let kind: PluginSpec.Kind
        var builtinName: String?
        switch (r.exec, r.builtin, r.container) {
        case (let exec?, nil, nil):
            let words = exec.split(separator: " ").map(String.init)
            guard let command = words.first else { throw EngineError(.startFailed, "--exec names no command") }
            kind = .exec(command: command, arguments: Array(words.dropFirst()))
        case (nil, let builtin?, nil):
            guard let plugin = builtins(builtin) else { throw EngineError(.unknownBuiltin, "no built-in plugin named \(builtin)") }
            kind = .builtin(plugin)
            builtinName = builtin
        case (nil, nil, let bundle?):
            guard bundle.hasPrefix("/") else { throw EngineError(.startFailed, "--container needs an absolute bundle path, not \(bundle)") }
            kind = .container(bundle: bundle)
        default:
            throw EngineError(.startFailed, "plugin add needs exactly one of --exec, --builtin or --container")
        }
        var privileges: Set<Privilege> = []
        for text in r.privileges ?? [] {
            guard let p = Privilege(text) else {
                throw EngineError(.badSetting, "\(text) is not a privilege; write network=host, mount=SOURCE:DESTINATION[:ro], capability=CAP_NAME or device=/dev/NAME")
            }
            privileges.insert(p)
        }
        var spec = PluginSpec(
            name: r.name, kind: kind, options: r.options ?? "", grantAll: r.grantAllPermissions,
            privileges: privileges, grantAllPrivileges: r.grantAllPermissions
        )
        spec.adoptState = r.adoptState
        spec.builtinName = builtinName
        return spec
    }
}
