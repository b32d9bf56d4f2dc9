#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import PluginKit
import ShellAdapter

/// `plugboard-sh SCRIPT [ARGS]`: a subprocess plugin that serves a shell script's header
/// registrations over fds 3/4, so the script never sees msgpack (docs/SHELL.md).
struct Adapter: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard-sh",
        abstract: "Run a shell script as a Plugboard plugin.",
        discussion: """
            The script declares what it serves in header comments:
              # plugboard: hook container.create priority=50 policy=optional timeout=2s format=json
              # plugboard: job backup.run format=env
            and is run with the event or job name as $1 for each call. Under the daemon:
              plugboardd --plugin-exec "audit=plugboard-sh /etc/plugboard/audit.sh"
            Inside a script, `plugboard-sh call JOB JSON` calls a job with the plugin's grants.
            Check a script's header without a daemon: plugboard-sh --check SCRIPT
            """,
        version: "plugboard-sh \(PlugboardVersion.release) (protocol \(PlugboardVersion.protocolVersion))"
    )

    @Option(help: "Call-mode processes at once; more calls wait their turn.")
    var concurrency: Int = 4

    @Flag(help: "Print the registrations the header declares and exit.")
    var check = false

    @Argument(help: "The script (executable).")
    var script: String

    @Argument(parsing: .captureForPassthrough, help: "Arguments passed to the script after the event or job name.")
    var arguments: [String] = []

    func run() async throws {
        let path = URL(fileURLWithPath: script).standardizedFileURL.path
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read \(script)")
        }
        guard access(path, X_OK) == 0 else { throw ValidationError("\(script) is not executable: chmod +x it (it runs with its own #! line)") }
        let base = (path as NSString).lastPathComponent
        let entries: [ScriptEntry]
        do {
            entries = try ScriptHeader.parse(String(decoding: data, as: UTF8.self), script: base)
        } catch let error as ScriptHeaderError {
            writeToStandardError("plugboard-sh: \(error)\n")
            throw ExitCode(2)
        }
        if check {
            for e in entries {
                print("line \(e.line): \(e.kind.rawValue) \(e.name) priority=\(e.priority) timeout=\(e.timeout.short) format=\(e.format.rawValue) mode=\(e.mode.rawValue)" + (e.kind == .hook ? " phase=\(e.phase.rawValue) policy=\(e.policy.rawValue)" : ""))
            }
            return
        }
        let logger = Logger(label: "plugboard-sh")
        var environment = ProcessInfo.processInfo.environment
        let me = selfPath()
        environment["PLUGBOARD_SH"] = me
        environment["PATH"] = (me as NSString).deletingLastPathComponent + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        let name = environment["PLUGBOARD_PLUGIN_NAME"] ?? ((base as NSString).deletingPathExtension)
        // The callback socket exists before the first call can arrive.
        let box = NIOLockedValueBox<(any EngineCalls)?>(nil)
        let callbacks = try await CallbackServer.start(engine: box, logger: logger)
        socketToRemove = callbacks.path
        // However the adapter ends — its session over (exit) or stopped by the daemon
        // (SIGTERM) — no script it started outlives it, in call mode or in stream mode.
        atexit { cleanUp() }
        signalSources = [SIGTERM, SIGINT].map(dieOfSignalAfterCleanUp)
        environment["PLUGBOARD_SH_SOCKET"] = callbacks.path
        let runner = ScriptRunner(script: path, arguments: arguments.first == "--" ? Array(arguments.dropFirst()) : arguments, environment: environment, concurrency: concurrency)
        await PluginKit.serve(ShellPlugin(name: name, entries: entries, runner: runner, engine: box), logger: logger)
    }
}

/// `plugboard-sh call JOB [JSON]`: from inside a script, call a job through the adapter.
struct CallBack: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard-sh call",
        abstract: "Call a job through the plugboard-sh adapter running this script, with its plugin's grants.",
        discussion: "Prints the result as one line of JSON; on error prints it to stderr and exits 1.\nExample: plugboard-sh call state.get '{\"key\": \"count\"}'"
    )
    @Argument(help: "The job.") var job: String
    @Argument(help: "The argument, as JSON (default null).") var json: String?
    @Option(help: "Seconds to wait for the answer.") var timeout: Double = 10

    func run() async throws {
        guard let socket = ProcessInfo.processInfo.environment["PLUGBOARD_SH_SOCKET"] else {
            throw ValidationError("plugboard-sh call works inside a script that plugboard-sh runs (PLUGBOARD_SH_SOCKET is not set)")
        }
        var argument: Value = .nil
        if let json {
            do { argument = try JSONDecoder().decode(Value.self, from: Data(json.utf8)) } catch { throw ValidationError("the argument is not valid JSON: \(json)") }
        }
        let logger = Logger(label: "plugboard-sh", factory: { _ in SwiftLogNoOpLogHandler() })
        let session = try await Session.connect(unixSocketPath: socket, configuration: .init(name: "plugboard-sh call"), logger: logger)
        defer { session.close(reason: "done") }
        try await session.start()
        let channel = try session.open(label: "call")
        let ms = Duration.clampedSeconds(timeout).saturatingMilliseconds
        do {
            let result = try await channel.request(
                .fields(("job", .string(job)), ("argument", argument), ("timeout_ms", .int(ms))), timeout: .milliseconds(ms + 2000)
            )
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } catch let error as ChanError where error.code == .remote {
            writeToStandardError("plugboard-sh call \(job): \(error.reason)\n")
            throw ExitCode(1)
        }
    }
}

nonisolated(unsafe) var socketToRemove: String?
/// The handlers of SIGTERM and SIGINT, kept for the life of the process.
nonisolated(unsafe) var signalSources: [any DispatchSourceSignal] = []

/// Kills the process group of every script still running and removes the callback socket.
func cleanUp() {
    ProcessGroups.killAll()
    if let path = socketToRemove {
        unlink(path)
        rmdir((path as NSString).deletingLastPathComponent)
    }
}

/// Handles `signal` on a dispatch queue (not in a signal handler, where taking a lock is
/// unsafe): cleans up, then dies of the signal as it would have, so the daemon sees the
/// same end. Scripts start with the default disposition again (the spawner resets it).
func dieOfSignalAfterCleanUp(_ number: Int32) -> any DispatchSourceSignal {
    signal(number, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
    source.setEventHandler {
        cleanUp()
        signal(number, SIG_DFL)
        raise(number)
    }
    source.resume()
    return source
}

func selfPath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return CommandLine.arguments[0] }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Writes to fd 2 directly (the C `stderr` global is not concurrency-safe in Swift 6).
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}

/// Parses and runs one of the two commands, exiting as argument-parser would.
func runCommand<C: AsyncParsableCommand>(_ type: C.Type, _ arguments: [String]) async {
    do {
        var command = try type.parseAsRoot(arguments)
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    } catch {
        type.exit(withError: error)
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "call" {
    await runCommand(CallBack.self, Array(arguments.dropFirst()))
} else {
    await runCommand(Adapter.self, arguments)
}
