#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation

/// What a `container.create` hook may change beyond the harmless fields (name, env,
/// hostname, workdir, labels), each a grant its plugin must hold:
///
/// - `mount=HOST_PATH` — add, change or remove mounts whose source is HOST_PATH or below it;
///   `mount=HOST_PATH:ro` the same for read-only mounts only.
/// - `command` — change what runs: `args` or `rootfs`.
///
/// A container spec has no field for capabilities, devices, host namespaces, the user or
/// privileged mode, so no grant lets a hook set one: a hook that adds any field the spec
/// does not have is refused too, by name.
public enum HookPrivilege: Sendable, Hashable, CustomStringConvertible {
    /// Mounts from `source` or below; `readOnly` allows read-only ones only.
    case mount(source: String, readOnly: Bool)
    /// The command: `args` and `rootfs`.
    case command

    /// Parses `mount=/srv/data`, `mount=/srv/data:ro` or `command`; nil for anything else.
    public init?(_ text: String) {
        if text == "command" {
            self = .command
            return
        }
        guard text.hasPrefix("mount=") else { return nil }
        var path = String(text.dropFirst("mount=".count))
        var readOnly = false
        if path.hasSuffix(":ro") {
            readOnly = true
            path = String(path.dropLast(3))
        }
        guard path.hasPrefix("/") else { return nil }
        self = .mount(source: HookPrivilege.normalize(path), readOnly: readOnly)
    }

    /// `mount=/srv/data`, `mount=/srv/data:ro`, `command`.
    public var description: String {
        switch self {
        case .mount(let source, let readOnly): return "mount=\(source)" + (readOnly ? ":ro" : "")
        case .command: return "command"
        }
    }

    /// The fields a container spec has; anything else in a hook's answer is refused.
    static let specFields: Set<String> = ["name", "rootfs", "args", "env", "hostname", "workdir", "labels", "mounts"]

    /// What `after` changes relative to `before` that `granted` does not allow: one
    /// refusal per field, naming the grant it would need.
    public static func refusals(before: Value, after: Value, granted: Set<HookPrivilege>) -> [(field: String, missing: String)] {
        var refused: [(field: String, missing: String)] = []
        let beforeKeys = Dictionary((before.mapValue ?? []).compactMap { e in e.key.stringValue.map { ($0, e.value) } }, uniquingKeysWith: { a, _ in a })
        for entry in after.mapValue ?? [] {
            guard let key = entry.key.stringValue else {
                refused.append(("a non-string key", "nothing: a container spec has string keys only"))
                continue
            }
            if !specFields.contains(key), beforeKeys[key] != entry.value {
                refused.append((key, "nothing: \(key) is not a field of a container spec, and no grant lets a hook set it"))
            }
        }
        if before["args"] != after["args"] || before["rootfs"] != after["rootfs"], !granted.contains(.command) {
            refused.append((before["args"] != after["args"] ? "args" : "rootfs", "command"))
        }
        let was = mounts(before)
        let now = mounts(after)
        for m in now where !was.contains(m) {
            if let missing = missingGrant(for: m, granted) { refused.append(("mounts (\(m.source) at \(m.destination))", missing)) }
        }
        for m in was where !now.contains(m) {
            if let missing = missingGrant(for: m, granted) { refused.append(("mounts (removes \(m.source) at \(m.destination))", missing)) }
        }
        return refused
    }

    private struct MountEntry: Hashable {
        var source: String
        var destination: String
        var readOnly: Bool
        var raw: Value
    }

    private static func mounts(_ spec: Value) -> [MountEntry] {
        (spec["mounts"]?.arrayValue ?? []).map { m in
            let options = (m["options"]?.arrayValue ?? []).compactMap(\.stringValue)
            return MountEntry(
                source: m["source"]?.stringValue ?? "", destination: m["destination"]?.stringValue ?? "",
                readOnly: options.contains("ro"), raw: m
            )
        }
    }

    /// The grant a mount needs when none of `granted` covers it, else nil. The source is
    /// resolved (`..`, symlinks) before it is compared: `/srv/data/../../etc` is `/etc`.
    private static func missingGrant(for m: MountEntry, _ granted: Set<HookPrivilege>) -> String? {
        let source = resolve(m.source)
        for g in granted {
            guard case .mount(let root, let readOnlyOnly) = g else { continue }
            guard source == root || source.hasPrefix(root == "/" ? "/" : root + "/") else { continue }
            if readOnlyOnly && !m.readOnly { continue }
            return nil
        }
        return "mount=\(source)" + (m.readOnly ? ":ro" : "")
    }

    /// The path with `.`/`..` removed, and symlinks resolved where it exists.
    static func resolve(_ path: String) -> String {
        if let real = realpath(path, nil) {
            defer { free(real) }
            return String(cString: real)
        }
        return normalize(path)
    }

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." || part.isEmpty { continue }
            if part == ".." { _ = parts.popLast() } else { parts.append(part) }
        }
        return "/" + parts.joined(separator: "/")
    }
}
