import Chan

/// Field paths a hook changed, computed from its input and output payloads.
///
/// Maps descend by key (`labels.team`); arrays that only grew report each appended
/// element (`mounts[2]`), so two hooks that each add a mount never conflict; any other
/// array change reports the changed indices.
enum FieldChanges {
    static func between(_ old: Value, _ new: Value) -> [String] {
        var out: [String] = []
        collect(old, new, path: "", into: &out)
        return out
    }

    private static func join(_ path: String, _ key: String) -> String {
        path.isEmpty ? key : path + "." + key
    }

    private static func collect(_ old: Value, _ new: Value, path: String, into out: inout [String]) {
        if old == new { return }
        switch (old, new) {
        case (.map(let a), .map(let b)):
            // Payload maps are small: linear scans beat building dictionaries of Values.
            for entry in a {
                let newValue = b.first { $0.key == entry.key }?.value ?? .nil
                if newValue != entry.value {
                    collect(entry.value, newValue, path: join(path, entry.key.stringValue ?? entry.key.description), into: &out)
                }
            }
            for entry in b where !a.contains(where: { $0.key == entry.key }) {
                collect(.nil, entry.value, path: join(path, entry.key.stringValue ?? entry.key.description), into: &out)
            }
        case (.array(let a), .array(let b)):
            if b.count >= a.count && Array(b.prefix(a.count)) == a {
                for i in a.count..<b.count { out.append("\(path)[\(i)]") }
            } else {
                for i in 0..<max(a.count, b.count) {
                    let x = i < a.count ? a[i] : .nil
                    let y = i < b.count ? b[i] : .nil
                    if x != y { out.append("\(path)[\(i)]") }
                }
            }
        default:
            out.append(path.isEmpty ? "(payload)" : path)
        }
    }

    /// Whether two paths touch the same data: equal, or one inside the other.
    static func overlap(_ a: String, _ b: String) -> Bool {
        if a == b || a == "(payload)" || b == "(payload)" { return true }
        return a.hasPrefix(b + ".") || a.hasPrefix(b + "[") || b.hasPrefix(a + ".") || b.hasPrefix(a + "[")
    }
}
