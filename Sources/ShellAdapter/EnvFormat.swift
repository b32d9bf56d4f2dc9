import Chan

/// `format=env`: a payload flattened into `PB_*` environment variables, and `KEY=VALUE`
/// lines read back.
///
/// Map keys are upper-cased with every character other than a letter or digit turned into
/// `_`; list elements are numbered from 0 and `PB_X_COUNT` says how many there are:
/// `{"name": "web", "env": ["A=1"], "mounts": [{"source": "/d"}]}` gives `PB_NAME=web`,
/// `PB_ENV_0=A=1`, `PB_ENV_COUNT=1`, `PB_MOUNTS_0_SOURCE=/d`, `PB_MOUNTS_COUNT=1`. A
/// payload that is not a map is `PB_VALUE`.
///
/// Nothing is lost or overwritten silently. A payload that env variables cannot carry
/// faithfully is refused with ``ShellCallError/unrepresentable(_:)``: a value holding a
/// NUL byte (a variable would end there), and two different paths that flatten to the same
/// name (`a.b`, `a_b` and `A-B` are all `PB_A_B`; a key `env_count` beside a list `env`
/// would be its `PB_ENV_COUNT`). An answer naming one key twice — what a value printed with
/// a newline in it forges — is garbage, not a last-one-wins.
public enum EnvFormat {
    /// The variable-name form of a key.
    public static func normalize(_ key: String) -> String {
        String(key.uppercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" })
    }

    /// The `PB_*` variables for `payload`, in payload order (each list's count after its elements).
    /// - Throws: ``ShellCallError/unrepresentable(_:)`` for a NUL byte in a value or two
    ///   paths that would become one variable, naming them.
    public static func flatten(_ payload: Value) throws -> [(String, String)] {
        try variables(payload).map { ($0.name, $0.value) }
    }

    /// One variable and where in the payload it comes from.
    struct Variable {
        var name: String
        var value: String
        /// The payload path, as the error messages show it.
        var origin: String
        /// A list's `_COUNT`, not a value of the payload.
        var isCount: Bool
    }

    /// A step into a payload: a map key or a list index.
    enum Step {
        case key(String)
        case index(Int)
    }

    static func variables(_ payload: Value) throws -> [Variable] {
        var out: [Variable] = []
        var seen: [String: String] = [:]
        if case .map = payload {
            try walk(payload, "PB", [], into: &out, seen: &seen)
        } else {
            try walk(payload, "PB_VALUE", [], into: &out, seen: &seen)
        }
        return out
    }

    private static func walk(_ v: Value, _ name: String, _ path: [Step], into out: inout [Variable], seen: inout [String: String]) throws {
        func add(_ name: String, _ value: String, origin: String, isCount: Bool) throws {
            if let earlier = seen[name] {
                throw ShellCallError.unrepresentable(
                    "\(earlier) and \(origin) would both be \(name) in env format; refused rather than one hiding the other: rename one, or use format=json"
                )
            }
            seen[name] = origin
            out.append(Variable(name: name, value: value, origin: origin, isCount: isCount))
        }
        switch v {
        case .map(let entries):
            for e in entries {
                let key = e.key.stringValue ?? e.key.description
                try walk(e.value, name + "_" + normalize(key), path + [.key(key)], into: &out, seen: &seen)
            }
        case .array(let items):
            for (i, item) in items.enumerated() { try walk(item, "\(name)_\(i)", path + [.index(i)], into: &out, seen: &seen) }
            try add(name + "_COUNT", String(items.count), origin: "the length of list \(describe(path))", isCount: true)
        default:
            let text = scalar(v)
            guard !text.utf8.contains(0) else {
                throw ShellCallError.unrepresentable(
                    "\(describe(path)) (\(name)) holds a NUL byte, which an environment variable cannot carry; refused rather than cut short: use format=json"
                )
            }
            try add(name, text, origin: describe(path), isCount: false)
        }
    }

    /// A payload path as errors show it: `mounts[0].source`, `labels."io.team"`, `"a.b"`.
    static func describe(_ path: [Step]) -> String {
        guard !path.isEmpty else { return "the payload" }
        var text = ""
        for step in path {
            switch step {
            case .index(let i):
                text += "[\(i)]"
            case .key(let k):
                let plain = !k.isEmpty && k.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
                text += (text.isEmpty ? "" : ".") + (plain ? k : k.debugDescription)
            }
        }
        return text.hasPrefix("[") ? "the payload" + text : text
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
    /// A key written twice is an error too: a value printed with a newline in it becomes
    /// extra lines, and a forged line repeating a real key must fail the call, not win it.
    public static func lines(_ output: String) throws -> [(String, String)] {
        try numberedLines(output, sameKey: { $0 }).map { ($0.key, $0.value) }
    }

    /// The lines with their numbers; `sameKey` maps a key to what two keys must not share.
    private static func numberedLines(_ output: String, sameKey: (String) -> String) throws -> [(key: String, value: String, line: Int)] {
        var pairs: [(key: String, value: String, line: Int)] = []
        var seen: [String: (key: String, line: Int)] = [:]
        for (i, line) in output.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
                throw ShellCallError.garbage("line \(i + 1) of its output is not KEY=VALUE: \(text.prefix(200))")
            }
            let key = String(text[..<eq])
            if let earlier = seen[sameKey(key)] {
                let names = earlier.key == key ? key : "\(earlier.key) and \(key)"
                throw ShellCallError.garbage(
                    "\(names) answered twice, on lines \(earlier.line) and \(i + 1) of its output; each key once (a value printed with a newline in it forges lines: see docs/SHELL.md)"
                )
            }
            seen[sameKey(key)] = (key, i + 1)
            pairs.append((key, String(text[text.index(after: eq)...]), i + 1))
        }
        return pairs
    }

    /// A job's env-format result: a map of the keys as written (without a `PB_` prefix).
    /// A key given twice (`kb` twice, or `kb` and `PB_kb`) is an error.
    public static func result(_ output: String) throws -> Value {
        let strip = { (key: String) in key.hasPrefix("PB_") ? String(key.dropFirst(3)) : key }
        return .map(try numberedLines(output, sameKey: strip).map { (key: .string(strip($0.key)), value: .string($0.value)) })
    }

    /// A hook's env-format answer applied to its payload: each `PB_PATH=VALUE` sets the field
    /// whose variable name is `PB_PATH`; `PB_LIST_N` with N = the list's count appends; a
    /// name that matches no field adds a key (lower-cased) to the map it points into. The
    /// payload's list counts (`PB_ENV_COUNT` for a list `env`) are skipped: they follow from
    /// the lists. Two lines for one variable are an error.
    public static func apply(_ output: String, to payload: Value) throws -> Value {
        var result = payload
        let counts = Set(((try? variables(payload)) ?? []).filter(\.isCount).map(\.name))
        for (key, text, _) in try numberedLines(output, sameKey: normalize) {
            guard key.hasPrefix("PB_") else {
                throw ShellCallError.garbage("\(key) does not start with PB_: a hook in env format answers with PB_* lines")
            }
            if counts.contains(normalize(key)) { continue }
            let path = Substring(key.dropFirst(3))
            if case .map = result {
                result = try set(result, path: path, to: text, whole: key)
            } else if path == "VALUE" {
                result = typed(text, like: result)
            } else if path.hasPrefix("VALUE_") {
                result = try set(result, path: path.dropFirst(6), to: text, whole: key)
            } else {
                throw ShellCallError.garbage("\(key): the payload is not a map, so its variables are PB_VALUE and PB_VALUE_*")
            }
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
