import Chan
import NIOConcurrencyHelpers
import PluginKit

/// A script's header turned into a plugin declaration, each handler running the script.
public struct ShellPlugin: Plugin {
    public let name: String
    public let entries: [ScriptEntry]
    public let runner: ScriptRunner
    /// The engine connection PluginKit hands over once the session is up, for `plugboard-sh call`.
    public let engine: NIOLockedValueBox<(any EngineCalls)?>

    public init(name: String, entries: [ScriptEntry], runner: ScriptRunner, engine: NIOLockedValueBox<(any EngineCalls)?> = .init(nil)) {
        self.name = name
        self.entries = entries
        self.runner = runner
        self.engine = engine
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        if let e = context.engine { engine.withLockedValue { $0 = e } }
        var d = PluginDeclaration(name: name, version: "plugboard-sh")
        // What its hooks may change, from their `privileges=` (each once).
        var privileges: [String] = []
        for p in entries.flatMap(\.privileges) where !privileges.contains(p) { privileges.append(p) }
        d.hookPrivileges = privileges
        let runner = self.runner
        for entry in entries {
            switch entry.kind {
            case .job:
                // The daemon waits longer than the script may run (5 s more: the adapter on a
                // loaded machine), so that the script's own timeout error (its process group
                // killed) is what callers hear.
                d.job(entry.name, timeout: entry.timeout + .seconds(5)) { argument in
                    switch try await runner.answer(entry, payload: argument) {
                    case .value(let v): return v
                    case .veto(let reason): throw ShellCallError.failed(reason)
                    }
                }
            case .hook:
                d.hook(entry.name, phase: entry.phase, priority: entry.priority, timeout: entry.timeout, policy: entry.policy, overrides: entry.overrides) { payload, extra in
                    switch try await runner.answer(entry, payload: payload, extra: extra) {
                    case .value(let v): return .continue(v)
                    case .veto(let reason): return .veto(reason)
                    }
                }
            case .pipeline:
                d.messages(entry.name, priority: entry.priority, timeout: entry.timeout, policy: entry.policy == .optional ? .optional : .required) { type, body in
                    guard case .value(let v) = try await runner.answer(entry, payload: body) else { return [] }
                    return try Self.messages(v, defaultType: type)
                }
            case .calls:
                d.calls.append(entry.name)
            }
        }
        return d
    }

    /// A pipeline answer: `[{"type", "body"}, ...]`, one such map, or nothing (consumed).
    static func messages(_ v: Value, defaultType: String) throws -> [(type: String, body: Value)] {
        let items: [Value]
        switch v {
        case .nil: return []
        case .array(let a): items = a
        case .map: items = [v]
        default: throw ShellCallError.garbage("a pipeline answer is [{\"type\", \"body\"}, ...], not \(v)")
        }
        return try items.map { m in
            guard let body = m["body"] else { throw ShellCallError.garbage("a pipeline message needs \"body\": \(m)") }
            return (m["type"]?.stringValue ?? defaultType, body)
        }
    }
}
