import Chan
import PluginKit

/// `state`: a key/value store with a namespace per plugin, kept in SQLite under
/// `--state-dir` (see ``StateStore``).
///
/// A plugin reads and writes its own namespace (its name). Another plugin's namespace needs
/// the grant `state:NAMESPACE` (`plugboard plugin grant ME state:OTHER`); operators (the
/// admin socket) name the namespace they want. Jobs:
///
/// - `state.get {key, namespace?}` → `{key, value, version, found}` (version 0 when absent)
/// - `state.put {key, value, version?, namespace?}` → `{key, version}`; with `version`, a
///   compare-and-set (0: only if absent), else a version-conflict error
/// - `state.delete {key, version?, namespace?}` → `{key, deleted}`
/// - `state.list {prefix?, limit?, namespace?}` → `[{key, value, version}]` in key order
public struct StatePlugin: Plugin {
    public let store: StateStore
    /// Whether `caller` may use `namespace` besides its own (the engine's grants).
    let isGranted: @Sendable (_ caller: String, _ grant: String) async -> Bool

    public init(store: StateStore, isGranted: @escaping @Sendable (String, String) async -> Bool) {
        self.store = store
        self.isGranted = isGranted
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "state", version: "1.0.0")
        let store = self.store
        let isGranted = self.isGranted
        @Sendable func namespace(_ argument: Value, _ call: JobCall) async throws -> String {
            let asked = argument["namespace"]?.stringValue
            guard let caller = call.caller else {
                guard let asked else { throw StateError.badRequest("from the admin socket, name the namespace: {\"namespace\": PLUGIN, ...}") }
                return asked
            }
            guard let asked, asked != caller else { return caller }
            guard await isGranted(caller, "state:" + asked) else { throw StateError.notGranted(caller: caller, namespace: asked) }
            return asked
        }
        @Sendable func key(_ argument: Value) throws -> String {
            guard let k = argument["key"]?.stringValue, !k.isEmpty else { throw StateError.badRequest("name the key: {\"key\": K, ...}") }
            return k
        }
        d.job("state.get", withCall: { argument, call in
            let ns = try await namespace(argument, call)
            let k = try key(argument)
            let entry = try await store.get(ns, k)
            return .fields(("key", .string(k)), ("value", entry?.value ?? .nil), ("version", .int(entry?.version ?? 0)), ("found", .bool(entry != nil)))
        })
        d.job("state.put", withCall: { argument, call in
            let ns = try await namespace(argument, call)
            let k = try key(argument)
            guard let value = argument["value"] else { throw StateError.badRequest("state.put needs {\"key\": K, \"value\": V}") }
            let version = try await store.put(ns, k, value, expected: argument["version"]?.intValue)
            return .fields(("key", .string(k)), ("version", .int(version)))
        })
        d.job("state.delete", withCall: { argument, call in
            let ns = try await namespace(argument, call)
            let k = try key(argument)
            let deleted = try await store.delete(ns, k, expected: argument["version"]?.intValue)
            return .fields(("key", .string(k)), ("deleted", .bool(deleted)))
        })
        d.job("state.list", withCall: { argument, call in
            let ns = try await namespace(argument, call)
            let entries = try await store.list(ns, prefix: argument["prefix"]?.stringValue ?? "", limit: Int(min(max(argument["limit"]?.intValue ?? 1000, 1), 10_000)))
            return .array(entries.map { .fields(("key", .string($0.key)), ("value", $0.value), ("version", .int($0.version))) })
        })
        return d
    }
}
