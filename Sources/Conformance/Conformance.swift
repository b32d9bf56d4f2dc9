import Chan
import Foundation
import Logging
import Routing
import Spawn

/// How to run the kit.
public struct ConformanceOptions: Sendable {
    /// The plugin.
    public var command: PluginCommand
    /// How long the kit waits for the plugin each time it expects something (a HELLO, a
    /// reply, credit, a GOAWAY).
    public var timeout: Duration
    /// How long a plugin has to exit after GOAWAY or end of file (plugboardd's
    /// `--shutdown-grace`, 5 s by default).
    public var grace: Duration
    /// The jobs that echo their argument; nil: every declared job named `echo` or ending in
    /// `.echo` (`py.echo`). Empty: none.
    public var echoJobs: [String]?
    /// The payload to call a job, extension point, hook event or pipeline type with,
    /// instead of the kit's default (nil for a job; a sample payload for a hook).
    public var inputs: [String: Value]
    /// Copy the plugin's stdout and stderr to the kit's stderr as it runs.
    public var showOutput: Bool

    /// Options for `command` with the defaults: 5 s timeout and grace, echo jobs found by name.
    public init(command: PluginCommand, timeout: Duration = .seconds(5), grace: Duration = .seconds(5), echoJobs: [String]? = nil, inputs: [String: Value] = [:], showOutput: Bool = false) {
        self.command = command
        self.timeout = timeout
        self.grace = grace
        self.echoJobs = echoJobs
        self.inputs = inputs
        self.showOutput = showOutput
    }
}

/// One case's outcome.
public struct CaseResult: Sendable, Codable, Hashable {
    /// Passed, failed, or not applicable to this plugin.
    public enum Status: String, Sendable, Codable {
        case pass, fail, skip
    }
    /// The case's name (docs/CONFORMANCE.md lists them).
    public var name: String
    /// How it came out.
    public var status: Status
    /// What the plugin did wrong (fail), why the case does not apply (skip), or a note (pass).
    public var message: String
    /// The plugin's last lines of output, on a failure.
    public var output: [String]

    /// A result.
    public init(name: String, status: Status, message: String = "", output: [String] = []) {
        self.name = name
        self.status = status
        self.message = message
        self.output = output
    }

    /// The case's line in the text format: `PASS name`, `PASS name (note)`,
    /// `FAIL name: what it did wrong`, `SKIP name: why`.
    public var line: String {
        switch status {
        case .pass: return message.isEmpty ? "PASS \(name)" : "PASS \(name) (\(message))"
        case .fail: return "FAIL \(name): \(message)"
        case .skip: return "SKIP \(name): \(message)"
        }
    }
}

/// What a run of the kit found.
public struct ConformanceReport: Sendable, Codable {
    /// The plugin's command line.
    public var command: [String]
    /// The name the plugin gave in its HELLO, when it sent one.
    public var plugin: String?
    /// Every case, in the order run.
    public var cases: [CaseResult]

    /// How many passed.
    public var passed: Int { cases.filter { $0.status == .pass }.count }
    /// How many failed.
    public var failed: Int { cases.filter { $0.status == .fail }.count }
    /// How many did not apply.
    public var skipped: Int { cases.filter { $0.status == .skip }.count }

    /// The last line of the text format: `N passed, M failed`.
    public var summary: String { "\(passed) passed, \(failed) failed" }

    /// The whole text format: one line per case, then the summary.
    public var text: String { (cases.map(\.line) + [summary]).joined(separator: "\n") + "\n" }

    /// The JSON format (docs/CONFORMANCE.md): `{"command", "plugin", "cases": [{"name",
    /// "status", "message", "output"}], "passed", "failed", "skipped"}`.
    public var json: String {
        struct Wire: Encodable {
            var command: [String]
            var plugin: String?
            var cases: [CaseResult]
            var passed: Int
            var failed: Int
            var skipped: Int
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(Wire(command: command, plugin: plugin, cases: cases, passed: passed, failed: failed, skipped: skipped))) ?? Data("{}".utf8)
        // Foundation writes an empty list across lines ("[\n\n]"); a raw newline is never
        // inside a JSON string, so this touches formatting only.
        return String(decoding: data, as: UTF8.self).replacingOccurrences(of: #"\[\n\s*\]"#, with: "[]", options: .regularExpression) + "\n"
    }

    /// Builds a report.
    public init(command: [String], plugin: String?, cases: [CaseResult]) {
        self.command = command
        self.plugin = plugin
        self.cases = cases
    }
}

/// The conformance kit: runs a plugin executable, in any language, through what
/// docs/PROTOCOL.md requires, without a daemon. docs/CONFORMANCE.md lists the cases.
public enum Conformance {
    /// Runs every case against the plugin; `onCase` sees each result as it is known.
    public static func run(_ options: ConformanceOptions, logger: Logger, onCase: @escaping @Sendable (CaseResult) -> Void = { _ in }) async -> ConformanceReport {
        let runner = Runner(options: options, logger: logger, onCase: onCase)
        await runner.runAll()
        return ConformanceReport(command: options.command.commandLine, plugin: runner.pluginName, cases: runner.results)
    }
}

/// A case's failure: what the plugin did wrong.
struct Failure: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Skipping a case: why it does not apply.
struct NotApplicable: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}
