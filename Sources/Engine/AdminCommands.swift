import Chan
import Containers
import Foundation
import Hooks
import Hub
import Pipeline
import PluginKit
import Routing

/// The admin commands. A request body is `{"command": NAME, ...arguments}`; the reply's
/// `ok` value is the result. See docs/ADMIN.md for each command's shape.
enum AdminCommands {
    static func answer(_ request: Request, engine: Engine, builtins: @escaping AdminServer.BuiltinLookup) async {
        do {
            let result = try await run(request.body, engine: engine, builtins: builtins)
            try? await request.respond(result)
        } catch let error as EngineError {
            try? await request.fail(code: "engine.\(error.code)".replacingOccurrences(of: " ", with: "-"), message: error.reason)
        } catch let error as RoutingError {
            try? await request.fail(code: "routing.\(error.code)".replacingOccurrences(of: " ", with: "-"), message: error.reason)
        } catch {
            try? await request.fail(code: "admin.error", message: "\(error)")
        }
    }

    static func string(_ body: Value, _ key: String) throws -> String {
        guard let s = body[key]?.stringValue else { throw EngineError(.badDeclaration, "the command needs \"\(key)\"") }
        return s
    }

    static func run(_ body: Value, engine: Engine, builtins: @escaping AdminServer.BuiltinLookup) async throws -> Value {
        let command = try string(body, "command")
        let force = body["force"]?.boolValue ?? false
        switch command {
        case "plugin.ls":
            var rows: [Value] = []
            for s in await engine.status() {
                let registrations = (s.description?.jobs.count ?? 0) + (s.description?.hooks.count ?? 0) + (s.description?.messageTypes.count ?? 0)
                rows.append(.fields(
                    ("name", .string(s.name)), ("kind", .string(s.kind)), ("state", .string(s.state.rawValue)),
                    ("pid", s.pid.map { .int(Int64($0)) } ?? .nil), ("restarts", .int(Int64(s.restarts))),
                    ("uptime_s", s.uptime.map { .float(($0 * 10).rounded() / 10) } ?? .nil),
                    ("registrations", .int(Int64(registrations)))
                ))
            }
            return .array(rows)
        case "plugin.inspect":
            return try await engine.inspect(try string(body, "name"))
        case "plugin.restart":
            try await engine.restart(try string(body, "name"))
            return "restarted"
        case "plugin.disable":
            try await engine.disable(try string(body, "name"), force: force)
            return "disabled"
        case "plugin.enable":
            try await engine.enable(try string(body, "name"))
            return "enabled"
        case "plugin.rm":
            try await engine.remove(try string(body, "name"), force: force)
            return "removed"
        case "plugin.set":
            var settings: [String: String] = [:]
            for entry in body["settings"]?.mapValue ?? [] {
                if let k = entry.key.stringValue, let v = entry.value.stringValue { settings[k] = v }
            }
            try await engine.set(try string(body, "name"), settings)
            return "set"
        case "plugin.grant":
            // Privileges (network=host, mount=..., capability=..., device=...) and jobs share the list.
            let items = (body["jobs"]?.arrayValue ?? []).compactMap(\.stringValue)
            let privileges = items.compactMap(Privilege.init)
            let jobs = items.filter { Privilege($0) == nil }
            try await engine.grant(try string(body, "name"), jobs: jobs, privileges: privileges)
            return "granted"
        case "plugin.add":
            let name = try string(body, "name")
            let grantAll = body["grant_all_permissions"]?.boolValue ?? false
            let kind: PluginSpec.Kind
            var options = body["options"]?.stringValue ?? ""
            if let exec = body["exec"]?.stringValue {
                let words = exec.split(separator: " ").map(String.init)
                guard let command = words.first else { throw EngineError(.startFailed, "--exec names no command") }
                kind = .exec(command: command, arguments: Array(words.dropFirst()))
            } else if let builtin = body["builtin"]?.stringValue {
                guard let plugin = builtins(builtin) else { throw EngineError(.unknownBuiltin, "no built-in plugin named \(builtin)") }
                kind = .builtin(plugin)
                options = body["options"]?.stringValue ?? ""
            } else if let bundle = body["container"]?.stringValue {
                guard bundle.hasPrefix("/") else { throw EngineError(.startFailed, "--container needs an absolute bundle path, not \(bundle)") }
                kind = .container(bundle: bundle)
            } else {
                throw EngineError(.startFailed, "plugin add needs --exec, --builtin or --container")
            }
            var privileges: Set<Privilege> = []
            for text in (body["privileges"]?.arrayValue ?? []).compactMap(\.stringValue) {
                guard let p = Privilege(text) else {
                    throw EngineError(.badSetting, "\(text) is not a privilege; write network=host, mount=SOURCE:DESTINATION[:ro], capability=CAP_NAME or device=/dev/NAME")
                }
                privileges.insert(p)
            }
            let status = try await engine.add(PluginSpec(name: name, kind: kind, options: options, grantAll: grantAll, privileges: privileges, grantAllPrivileges: grantAll))
            return .fields(("name", .string(status.name)), ("state", .string(status.state.rawValue)))
        case "call":
            return try await engine.hub.call(try string(body, "job"), body["argument"] ?? .nil, timeout: .clampedMilliseconds(body["timeout_ms"]?.intValue, default: .seconds(10)))
        case "endpoints":
            return .array(engine.hub.endpoints.map { .fields(("job", .string($0.name)), ("owner", .string($0.owner)), ("restarting", .bool($0.restarting))) })
        case "hooks":
            return .array(engine.hooks.allRegistrations.map {
                .fields(("event", .string($0.event)), ("phase", .string($0.phase.rawValue)), ("owner", .string($0.owner)),
                        ("priority", .int(Int64($0.priority))), ("policy", .string($0.policy.rawValue)), ("timeout", .string("\($0.timeout)")))
            })
        case "pipeline":
            return .array(engine.pipeline.allRegistrations.map {
                .fields(("type", .string($0.type)), ("owner", .string($0.owner)), ("priority", .int(Int64($0.priority))))
            })
        case "events":
            // The client passes a Sender; events flow on it until the client stops reading.
            guard case .channel(.sender(let sink))? = body["sink"] else { throw EngineError(.badDeclaration, "events needs a \"sink\" channel") }
            engine.bus.subscribe(try EventFilter(wire: body), capacity: EventBus.clampedCapacity(body["buffer"]?.intValue)).pump(to: sink)
            return "following"
        default:
            throw EngineError(.badDeclaration, "unknown admin command \(command)")
        }
    }
}
