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
/// - `state.list {prefix?, after?, limit?, namespace?}` → `[{key, value, version}]` in key
///   order, keys after `after` when given (to continue a listing)
///
/// Sizes: a value is at most ``StateStore/maximumValueBytes`` encoded and a key
/// ``StateStore/maximumKeyBytes`` (else `state.too-large`); a reply is at most
/// ``maximumReplyBytes``. A `state.list` whose entries would not fit fails with
/// `state.reply-too-large`, saying how many fit and where to continue (`after`), instead of
/// a reply no frame can carry.
public struct StatePlugin: Plugin {
    /// The largest reply the service sends, encoded (1 MiB less room for the envelope): it
    /// fits any frame the daemon's peers accept.
    public static let maximumReplyBytes = (1 << 20) - 4096

    public let store: StateStore
    /// Whether `caller` may use `namespace` besides its own (the engine's grants).
    let isGranted: @Sendable (_ caller: String, _ grant: String) async -> Bool

    /// Runs `body`, turning a size refusal into the error code the caller sees.
    static func sized<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as StateError {
            guard let code = error.code else { throw error }
            throw PluginError(code: code, message: error.description)
        }
    }

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
            let entry = try await Self.sized { try await store.get(ns, k, maxBytes: Self.maximumReplyBytes - k.utf8.count - 64) }
            return .fields(("key", .string(k)), ("value", entry?.value ?? .nil), ("version", .int(entry?.version ?? 0)), ("found", .bool(entry != nil)))
        })
        d.job("state.put", withCall: { argument, call in
            let ns = try await namespace(argument, call)
            let k = try key(argument)
            guard let value = argument["value"] else { throw StateError.badRequest("state.put needs {\"key\": K, \"value\": V}") }
            let version = try await Self.sized { try await store.put(ns, k, value, expected: argument["version"]?.intValue) }
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
            let limit = Int(min(max(argument["limit"]?.intValue ?? 1000, 1), 10_000))
            let after = argument["after"]?.stringValue
            let page = try await store.list(ns, prefix: argument["prefix"]?.stringValue ?? "", after: after, limit: limit, maxBytes: Self.maximumReplyBytes)
            if let cut = page.cutBefore {
                let fit = page.entries.count
                let message = fit == 0
                    ? "state.list: the entry \(cut) alone is \(page.cutBytes) bytes, more than a reply carries (\(Self.maximumReplyBytes) bytes); read the keys around it with \"after\": \"\(cut)\", and delete it (state.delete)"
                    : "state.list: only the first \(fit) of the entries asked for fit in a reply (\(Self.maximumReplyBytes) bytes); ask with \"limit\": \(fit), then continue with \"after\": \"\(page.entries[fit - 1].key)\""
                throw PluginError(code: "state.reply-too-large", message: message)
            }
            return .array(page.entries.map { .fields(("key", .string($0.key)), ("value", $0.value), ("version", .int($0.version))) })
        })
        return d
    }
}
