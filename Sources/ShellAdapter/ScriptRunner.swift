#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Hooks
import Routing
import Spawn

/// What a script decided.
public enum ScriptAnswer: Sendable, Hashable {
    case value(Value)
    case veto(String)
}

/// Runs a script for each call, in its declared format and mode, and reads its answer.
///
/// Call mode runs `SCRIPT NAME ARGS...` once per call, at most `concurrency` at once (the
/// rest queue). Stream mode keeps one `SCRIPT --stream ARGS...` running. See docs/SHELL.md.
public final class ScriptRunner: Sendable {
    /// The exit code that vetoes a hook (its first line of output is the reason).
    public static let vetoExitCode: Int32 = 3

    /// Compact JSON with sorted keys and unescaped slashes: what scripts read.
    static var jsonEncoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public let script: String
    let arguments: [String]
    let environment: [String: String]
    let limiter: Limiter
    let stream: StreamWorker
    let label: String

    /// - Parameters:
    ///   - environment: what every run gets (the adapter adds PB_* and PLUGBOARD_* variables).
    ///     Its own `PB_*` variables are dropped: that prefix belongs to the payload, so a
    ///     script never mistakes an inherited variable for a payload field.
    ///   - concurrency: call-mode processes at once (default 4).
    public init(script: String, arguments: [String], environment: [String: String], concurrency: Int = 4) {
        let environment = environment.filter { !$0.key.hasPrefix("PB_") }
        self.script = script
        self.arguments = arguments
        self.environment = environment
        self.limiter = Limiter(limit: concurrency)
        self.stream = StreamWorker(script: script, arguments: arguments, environment: environment)
        self.label = "script " + (script.split(separator: "/").last.map(String.init) ?? script)
    }

    /// Answers one call: a job's argument, a hook's payload, a pipeline message.
    public func answer(_ entry: ScriptEntry, payload: Value, extra: Value = .nil) async throws -> ScriptAnswer {
        let what = "\(label) (\(entry.kind.rawValue) \(entry.name))"
        if entry.mode == .stream {
            var request: [(String, Value)] = [("kind", .string(entry.kind.rawValue)), ("name", .string(entry.name)), ("payload", payload)]
            if entry.kind == .hook {
                request.append(("phase", .string(entry.phase.rawValue)))
                request.append(("object", extra["object"] ?? .nil))
            }
            let reply = try await stream.call(.map(request.map { (key: .string($0.0), value: $0.1) }), timeout: entry.timeout, what: what)
            if let reason = reply["veto"]?.stringValue { return try veto(entry, reason, what) }
            if let message = reply["error"]?.stringValue { throw ShellCallError.failed("\(what) failed: \(message)") }
            if let v = reply["payload"] ?? reply["result"] { return .value(v) }
            return .value(entry.kind == .hook ? payload : .nil)
        }
        var env = environment
        env["PLUGBOARD_EVENT"] = entry.name
        env["PLUGBOARD_KIND"] = entry.kind.rawValue
        if entry.kind == .hook {
            env["PLUGBOARD_PHASE"] = entry.phase.rawValue
            env["PLUGBOARD_OBJECT"] = extra["object"]?.stringValue ?? ""
        }
        var stdin: [UInt8]?
        switch entry.format {
        case .json: stdin = Array(try Self.jsonEncoder.encode(payload))
        case .env:
            do {
                for (k, v) in try EnvFormat.flatten(payload) { env[k] = v }
            } catch ShellCallError.unrepresentable(let reason) {
                throw ShellCallError.unrepresentable("\(what) was not run: its payload cannot be given in env format: \(reason)")
            }
        }
        let script = self.script
        let arguments = [entry.name] + self.arguments
        let (environment, input) = (env, stdin)
        let run = try await limiter.run {
            try await ScriptProcess.run(script, arguments: arguments, environment: environment, stdin: input, timeout: entry.timeout, what: what)
        }
        // What a script says on stderr reaches the daemon's log (the adapter's stderr is
        // logged line by line); on failure it is the caller's error as well.
        if !run.stderr.isEmpty {
            var text = Array(run.stderr.split(separator: "\n").map { "\(what): \($0)\n" }.joined().utf8)
            _ = write(2, &text, text.count)
        }
        return try interpret(run, entry: entry, payload: payload, what: what)
    }

    func interpret(_ run: ScriptRun, entry: ScriptEntry, payload: Value, what: String) throws -> ScriptAnswer {
        let stderr = run.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        if entry.kind == .hook, run.status == .exited(Self.vetoExitCode) {
            let first = (run.stdout + "\n" + run.stderr).split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.first { !$0.isEmpty }
            return try veto(entry, first.map { $0.hasPrefix("veto:") ? String($0.dropFirst(5)).trimmingCharacters(in: .whitespaces) : $0 } ?? "vetoed by \(label)", what)
        }
        guard run.status == .exited(0) else {
            throw ShellCallError.failed("\(what) \(run.status): " + (stderr.isEmpty ? "(nothing on stderr)" : String(stderr.suffix(4000))))
        }
        if entry.kind == .hook, let line = run.stdout.split(separator: "\n").first(where: { $0.hasPrefix("veto:") }) {
            return try veto(entry, String(line.dropFirst(5)).trimmingCharacters(in: .whitespaces), what)
        }
        let output = run.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        switch entry.format {
        case .env:
            return .value(entry.kind == .hook ? try EnvFormat.apply(output, to: payload) : try EnvFormat.result(output))
        case .json:
            if output.isEmpty {
                switch entry.kind {
                case .hook: return .value(payload)
                case .pipeline: return .value(.array([]))
                default: return .value(.nil)
                }
            }
            do {
                return .value(try JSONDecoder().decode(Value.self, from: Data(output.utf8)))
            } catch {
                throw ShellCallError.garbage("\(what) printed something that is not JSON: \(output.prefix(200))")
            }
        }
    }

    private func veto(_ entry: ScriptEntry, _ reason: String, _ what: String) throws -> ScriptAnswer {
        guard entry.kind == .hook else { throw ShellCallError.failed("\(what) refused: \(reason)") }
        return .veto(reason)
    }
}
