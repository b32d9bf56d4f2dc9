import Chan

/// `format=env`: a payload flattened into `PB_*` environment variables, and `KEY=VALUE`
/// lines read back.
///
/// Map keys are upper-cased with every character other than a letter or digit turned into
/// `_`; list elements are numbered from 0 and `PB_X_COUNT` says how many there are:
/// `{"name": "web", "env": ["A=1"], "mounts": [{"source": "/d"}]}` gives `PB_NAME=web`,
/// `PB_ENV_0=A=1`, `PB_ENV_COUNT=1`, `PB_MOUNTS_0_SOURCE=/d`, `PB_MOUNTS_COUNT=1`. A
/// payload that is not a map is `PB_VALUE`.
public enum EnvFormat {
    /// The variable-name form of a key.
    public static func normalize(_ key: String) -> String {
        String(key.uppercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" })
    }

    public static func flatten(_ payload: Value) -> [(String, String)] {
        var out: [(String, String)] = []
        if case .map = payload {
            walk(payload, "PB", into: &out)
        } else {
            walk(payload, "PB_VALUE", into: &out)
        }
        return out
    }

    private static func walk(_ v: Value, _ prefix: String, into out: inout [(String, String)]) {
        switch v {
        case .map(let entries):
            for e in entries { walk(e.value, prefix + "_" + normalize(e.key.stringValue ?? e.key.description), into: &out) }
        case .array(let items):
            for (i, item) in items.enumerated() { walk(item, "\(prefix)_\(i)", into: &out) }
            out.append((prefix + "_COUNT", String(items.count)))
        default:
            out.append((prefix, scalar(v)))
        }
    }

    static func scalar(_ v: Value) -> String {
        switch v {
        case .nil: return ""
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .float(let d): return String(d)
        case .string(let s): return s
        case .binary(let b): return String(decoding: b, as: UTF8.self)
        default: return v.description
        }
    }

    /// `KEY=VALUE` lines; blank lines are skipped; anything else is an error naming the line.
    public static func lines(_ output: String) throws -> [(String, String)] {
        var pairs: [(String, String)] = []
        for (i, line) in output.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
                throw ShellCallError.garbage("line \(i + 1) of its output is not KEY=VALUE: \(text.prefix(200))")
            }
            pairs.append((String(text[..<eq]), String(text[text.index(after: eq)...])))
        }
        return pairs
    }

    /// A job's env-format result: a map of the keys as written (without a `PB_` prefix).
    public static func result(_ output: String) throws -> Value {
        .map(try lines(output).map { (key: .string($0.0.hasPrefix("PB_") ? String($0.0.dropFirst(3)) : $0.0), value: .string($0.1)) })
    }

    /// A hook's env-format answer applied to its payload: each `PB_PATH=VALUE` sets the field
    /// whose variable name is `PB_PATH`; `PB_LIST_N` with N = the list's count appends; a
    /// name that matches no field adds a key (lower-cased) to the map it points into.
    public static func apply(_ output: String, to payload: Value) throws -> Value {
        var result = payload
        for (key, text) in try lines(output) {
            guard key.hasPrefix("PB_") else {
                throw ShellCallError.garbage("\(key) does not start with PB_: a hook in env format answers with PB_* lines")
            }
            if key.hasSuffix("_COUNT") { continue }  // counts follow from the lists
            result = try set(result, path: Substring(key.dropFirst(3)), to: text, whole: key)
        }
        return result
    }

    private static func set(_ node: Value, path: Substring, to text: String, whole: String) throws -> Value {
        switch node {
        case .map(var entries):
            // The longest key whose variable form starts the path.
            var best: (index: Int, length: Int)?
            for (i, e) in entries.enumerated() {
                let n = normalize(e.key.stringValue ?? e.key.description)
                if path == n || path.hasPrefix(n + "_"), n.count > (best?.length ?? -1) { best = (i, n.count) }
            }
            if let best {
                let rest = path.dropFirst(best.length)
                let child = entries[best.index].value
                entries[best.index].value = rest.isEmpty ? typed(text, like: child) : try set(child, path: rest.dropFirst(), to: text, whole: whole)
            } else {
                entries.append((key: .string(path.lowercased()), value: .string(text)))
            }
            return .map(entries)
        case .array(var items):
            let parts = path.split(separator: "_", maxSplits: 1)
            guard let first = parts.first, let index = Int(first) else {
                throw ShellCallError.garbage("\(whole): a list needs an index here")
            }
            let rest = parts.count > 1 ? parts[1] : ""
            if index == items.count {
                guard rest.isEmpty else { throw ShellCallError.garbage("\(whole): a new list element can only be a value") }
                items.append(.string(text))
            } else if index < items.count {
                items[index] = rest.isEmpty ? typed(text, like: items[index]) : try set(items[index], path: rest, to: text, whole: whole)
            } else {
                throw ShellCallError.garbage("\(whole): index \(index) is past the end of a list of \(items.count)")
            }
            return .array(items)
        default:
            throw ShellCallError.garbage("\(whole) goes inside a value that is neither a map nor a list")
        }
    }

    /// Keeps numbers and booleans what they were when the text still reads as one.
    private static func typed(_ text: String, like old: Value) -> Value {
        switch old {
        case .int: return Int64(text).map { .int($0) } ?? .string(text)
        case .uint: return UInt64(text).map { .uint($0) } ?? .string(text)
        case .bool: return text == "true" ? .bool(true) : text == "false" ? .bool(false) : .string(text)
        case .float: return Double(text).map { .float($0) } ?? .string(text)
        default: return .string(text)
        }
    }
}
