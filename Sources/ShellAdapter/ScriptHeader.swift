import Hooks

/// One `# plugboard: KIND NAME [KEY=VALUE ...]` line of a script's header.
public struct ScriptEntry: Sendable, Hashable {
    public enum Kind: String, Sendable, CaseIterable {
        /// A lifecycle hook: NAME is the event (container.create).
        case hook
        /// A job: NAME is the job.
        case job
        /// Pipeline messages of type NAME.
        case pipeline
        /// A job the script calls back with `plugboard-sh call` (it must be granted).
        case calls
    }

    /// How the payload reaches the script and its answer comes back.
    public enum Format: String, Sendable { case json, env }
    /// One process per call, or one long-running process for all stream-mode entries.
    public enum Mode: String, Sendable { case call, stream }

    public var kind: Kind
    public var name: String
    public var priority: Int = 0
    public var policy: HookPolicy = .required
    public var phase: HookPhase = .mutate
    public var overrides = false
    /// The call's limit; the script's process group is killed when it passes.
    public var timeout: Duration
    public var format: Format = .json
    public var mode: Mode = .call
    /// What a hook needs to change (`privileges=mount=/srv/data,command`), declared to the
    /// daemon as the plugin's hook privileges: each must be granted (docs/CONTAINERS.md).
    public var privileges: [String] = []
    /// The header line it came from (1-based).
    public var line: Int
}

/// A header line that cannot be understood: the script does not start.
public struct ScriptHeaderError: Error, CustomStringConvertible, Hashable {
    public var script: String
    public var line: Int
    public var text: String
    public var reason: String
    public var description: String { "\(script) line \(line): \(reason)\n  \(text)" }
}

/// The registrations a script declares in its header comment lines.
public enum ScriptHeader {
    static let keys = ["priority", "policy", "timeout", "format", "mode", "phase", "overrides", "privileges"]

    /// Parses every `# plugboard:` line of the leading comment block (the shebang and other
    /// comments may come first; the header ends at the first line that is not a comment).
    public static func parse(_ text: String, script: String) throws -> [ScriptEntry] {
        var entries: [ScriptEntry] = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            guard line.hasPrefix("#") else { break }
            let body = line.dropFirst().trimmingCharacters(in: .whitespaces)
            guard body.hasPrefix("plugboard:") else { continue }
            let number = index + 1
            func fail(_ reason: String) -> ScriptHeaderError {
                ScriptHeaderError(script: script, line: number, text: String(rawLine), reason: reason)
            }
            let words = body.dropFirst("plugboard:".count).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard words.count >= 2 else {
                throw fail("expected \"# plugboard: KIND NAME [KEY=VALUE ...]\" with KIND hook, job, pipeline or calls")
            }
            guard let kind = ScriptEntry.Kind(rawValue: words[0]) else {
                throw fail("unknown kind \"\(words[0])\": use hook, job, pipeline or calls")
            }
            let name = words[1]
            guard !name.contains("="), name.allSatisfy({ !$0.isWhitespace }) else { throw fail("\"\(name)\" is not a name") }
            var entry = ScriptEntry(kind: kind, name: name, timeout: kind == .hook ? .seconds(2) : .seconds(10), line: number)
            for pair in words.dropFirst(2) {
                let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2, !kv[1].isEmpty else { throw fail("\"\(pair)\" is not KEY=VALUE") }
                let (key, value) = (kv[0], kv[1])
                switch key {
                case "priority":
                    guard let p = Int(value) else { throw fail("priority must be a whole number, not \(value)") }
                    entry.priority = p
                case "policy":
                    guard let p = HookPolicy(rawValue: value) else { throw fail("policy is required or optional, not \(value)") }
                    entry.policy = p
                case "phase":
                    guard let p = HookPhase(rawValue: value) else { throw fail("phase is mutate, validate or observe, not \(value)") }
                    entry.phase = p
                case "overrides":
                    guard value == "true" || value == "false" else { throw fail("overrides is true or false, not \(value)") }
                    entry.overrides = value == "true"
                case "timeout":
                    guard let d = parseDuration(value) else { throw fail("timeout is a duration like 500ms, 2s or 1m, not \(value)") }
                    entry.timeout = d
                case "format":
                    guard let f = ScriptEntry.Format(rawValue: value) else { throw fail("format is json or env, not \(value)") }
                    entry.format = f
                case "mode":
                    guard let m = ScriptEntry.Mode(rawValue: value) else { throw fail("mode is call or stream, not \(value)") }
                    entry.mode = m
                case "privileges":
                    guard kind == .hook else { throw fail("privileges are a hook's: what it may change") }
                    let items = value.split(separator: ",").map(String.init)
                    for item in items where !(item == "command" || (item.hasPrefix("mount=/") && !item.contains(" "))) {
                        throw fail("\(item) is not a hook privilege: mount=/HOST/PATH, mount=/HOST/PATH:ro or command")
                    }
                    entry.privileges = items
                default:
                    throw fail("unknown key \"\(key)\"; the keys are \(keys.joined(separator: ", "))")
                }
            }
            if kind != .hook, (kind != .pipeline && entry.policy != .required) || entry.phase != .mutate || entry.overrides {
                throw fail("phase and overrides apply to hooks only, policy to hooks and pipeline types")
            }
            if kind == .pipeline, entry.format != .json {
                throw fail("pipeline entries answer with JSON messages: format=env cannot be used")
            }
            if entry.mode == .stream, entry.format != .json {
                throw fail("mode=stream speaks JSON lines: format=env cannot be used with it")
            }
            if let earlier = entries.first(where: { $0.kind == kind && $0.name == name && $0.phase == entry.phase && kind != .calls }) {
                throw fail("\(kind.rawValue) \(name) is already declared on line \(earlier.line)")
            }
            entries.append(entry)
        }
        guard entries.contains(where: { $0.kind != .calls }) else {
            throw ScriptHeaderError(
                script: script, line: 1, text: text.split(separator: "\n").first.map(String.init) ?? "",
                reason: "no \"# plugboard: hook|job|pipeline NAME ...\" line in the header: the script serves nothing"
            )
        }
        return entries
    }

    /// "500ms", "2s", "1m", clamped to one day (``Duration/longestAccepted``).
    static func parseDuration(_ text: String) -> Duration? {
        if text.hasSuffix("ms"), let n = Int64(text.dropLast(2)), n > 0 { return .clampedMilliseconds(n) }
        if text.hasSuffix("s"), let n = Double(text.dropLast()), n > 0 { return .clampedSeconds(n) }
        if text.hasSuffix("m"), let n = Double(text.dropLast()), n > 0 { return .clampedSeconds(n * 60) }
        return nil
    }
}
