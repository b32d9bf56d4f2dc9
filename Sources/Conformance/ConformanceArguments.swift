import ArgumentParser
import Chan
import Foundation
import Logging

/// The command line `plugboard plugin test` and `plugboard-conformance` share:
/// `[options] -- COMMAND [ARGS...]`.
public struct ConformanceArguments: ParsableArguments {
    /// text (one line per case, then `N passed, M failed`) or json (one document, for CI).
    @Option(help: ArgumentHelp("text: a line per case, then \"N passed, M failed\"; json: one document for CI.", valueName: "text|json"))
    public var format: String = "text"

    /// Seconds to wait for the plugin each time the kit expects something.
    @Option(help: ArgumentHelp("Seconds the kit waits for each thing it expects from the plugin (a HELLO, a reply, credit, a GOAWAY).", valueName: "seconds"))
    public var timeout: Double = 5

    /// Seconds the plugin has to exit after GOAWAY or end of file.
    @Option(help: ArgumentHelp("Seconds the plugin has to exit after GOAWAY or end of file (plugboardd's --shutdown-grace).", valueName: "seconds"))
    public var grace: Double = 5

    /// Jobs that echo their argument.
    @Option(name: .customLong("echo"), help: ArgumentHelp("A job that returns its argument unchanged, for the echo cases (default: every job named echo or ending in .echo). --no-echo: none.", valueName: "job"))
    public var echo: [String] = []

    /// No echo cases.
    @Flag(name: .customLong("no-echo"), help: "The plugin has no echo job: skip the echo cases.")
    public var noEcho = false

    /// Payloads for particular registrations.
    @Option(name: .customLong("input"), help: ArgumentHelp("The payload to call a job, extension point, hook event or pipeline type with, as NAME=JSON (default: nil for a job, a sample payload for a hook).", valueName: "name=json"))
    public var inputs: [String] = []

    /// PLUGBOARD_PLUGIN_NAME.
    @Option(help: ArgumentHelp("The name to start it under (PLUGBOARD_PLUGIN_NAME, as plugboardd's NAME=); default: none, it names itself.", valueName: "name"))
    public var name: String?

    /// PLUGBOARD_OPTIONS.
    @Option(help: ArgumentHelp("Its option string (PLUGBOARD_OPTIONS).", valueName: "string"))
    public var options: String = ""

    /// Copy the plugin's output to stderr.
    @Flag(name: .customLong("show-output"), help: "Copy the plugin's stdout and stderr to stderr as it runs.")
    public var showOutput = false

    /// The plugin's command line.
    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The plugin: -- COMMAND [ARGS...]", valueName: "command"))
    public var command: [String] = []

    /// Needed by ArgumentParser.
    public init() {}

    /// The plugin's command line without the `--` that introduces it.
    var commandLine: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    /// Refuses a format other than text or json, a missing command, a timeout or grace
    /// that is not positive, and an `--input` that is not NAME=JSON.
    public func validate() throws {
        guard format == "text" || format == "json" else { throw ValidationError("--format takes text or json, not \(format)") }
        guard !commandLine.isEmpty else { throw ValidationError("name the plugin to test: -- COMMAND [ARGS...]") }
        guard timeout > 0, grace > 0 else { throw ValidationError("--timeout and --grace take a positive number of seconds") }
        _ = try parsedInputs()
    }

    func parsedInputs() throws -> [String: Value] {
        var result: [String: Value] = [:]
        for entry in inputs {
            guard let equals = entry.firstIndex(of: "=") else { throw ValidationError("--input takes NAME=JSON, not \(entry)") }
            let json = String(entry[entry.index(after: equals)...])
            guard let value = try? JSONDecoder().decode(Value.self, from: Data(json.utf8)) else {
                throw ValidationError("--input \(entry[..<equals]): \(json) is not JSON")
            }
            result[String(entry[..<equals])] = value
        }
        return result
    }

    /// Writes to stdout at once (each case's line as it ends).
    static func emit(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    /// The kit's options from the command line.
    public var conformanceOptions: ConformanceOptions {
        get throws {
            ConformanceOptions(
                command: PluginCommand(executable: commandLine[0], arguments: Array(commandLine.dropFirst()), name: name, options: options),
                timeout: .milliseconds(Int64(timeout * 1000)), grace: .milliseconds(Int64(grace * 1000)),
                echoJobs: noEcho ? [] : (echo.isEmpty ? nil : echo), inputs: try parsedInputs(), showOutput: showOutput
            )
        }
    }

    /// Runs the kit and prints its report on stdout (text: each line as its case ends).
    /// Exit status: 0 when every case passed, 1 otherwise.
    public func runAndPrint(logger: Logger) async throws -> Int32 {
        signal(SIGPIPE, SIG_IGN)  // a plugin that exits leaves the kit writing into a closed pipe
        let options = try conformanceOptions
        let text = format == "text"
        let report = await Conformance.run(options, logger: logger) { result in
            if text { Self.emit(result.line + "\n") }
        }
        Self.emit(text ? report.summary + "\n" : report.json)
        return report.failed == 0 ? 0 : 1
    }
}
