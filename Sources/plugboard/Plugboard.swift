#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import AdminProtocol
import Foundation
import Logging

@main
struct Plugboard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard",
        abstract: "Manage a running plugboardd through its admin socket.",
        discussion: """
            Every command acts on the running daemon: add a plugin, call its job, disable it, remove it — plugboardd never restarts. The socket is --socket (or -H), before or after the command, else $PLUGBOARD_SOCKET, else the daemon's default path.

            Every command takes --format json; an error then goes to stderr as {"error": {"code", "message"}}.
            """,
        version: "plugboard \(PlugboardVersion.release) (protocol \(PlugboardVersion.protocolVersion))",
        subcommands: [
            PluginGroup.self, ContainerGroup.self, Call.self, Endpoints.self, HooksList.self, PipelineGroup.self, Events.self,
            MetricsCommand.self, VersionCommand.self,
        ]
    )

    /// The socket given before the subcommand (`plugboard --socket X plugin ls`, as
    /// `docker -H` works); every subcommand shares this group, so it may come after too.
    @OptionGroup var connection: Connection

    /// Parses, runs, and reports a failure: with `--format json` as a JSON error on stderr;
    /// a validation error raised while running with the usage of the subcommand that raised it.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let json = CLIOutput.jsonRequested(arguments)
        var command: any ParsableCommand
        do {
            command = try await asyncParseAsRoot(arguments)
        } catch {
            fail(error, in: nil, json: json)
        }
        do {
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            fail(error, in: type(of: command), json: json)
        }
    }

    /// Exits for `error`, which `command` raised while running (nil: while parsing).
    static func fail(_ error: any Error, in command: (any ParsableCommand.Type)?, json: Bool) -> Never {
        // Help, --version, completions and a container's own exit code are not failures to report.
        if exitCode(for: error) == .success || error is ExitCode { exit(withError: error) }
        var status = Self.exitCode(for: error)
        var message = Self.message(for: error)
        var code = "cli.error"
        switch error {
        case let e as CLIError:
            code = e.code
            message = e.message
        case is ValidationError:
            code = "cli.usage"
            status = .validationFailure
        default:
            if status == .validationFailure { code = "cli.usage" }
        }
        if json {
            CLIOutput.writeError(code: code, message: message)
            Foundation.exit(status.rawValue)
        }
        if let command, error is ValidationError {
            // Raised in run(): the usage shown is the subcommand's, as a parse error's is.
            let path = commandPath(command)
            let text = "Error: \(message)\nUsage: \(usageString(for: command))\n  See '\(path.joined(separator: " ")) --help' for more information.\n"
            writeToStandardError(text)
            Foundation.exit(status.rawValue)
        }
        exit(withError: error)
    }

    /// The names from the root to `command`: `["plugboard", "plugin", "add"]`.
    static func commandPath(_ command: any ParsableCommand.Type) -> [String] {
        func search(_ node: any ParsableCommand.Type, _ path: [String]) -> [String]? {
            let name = node.configuration.commandName ?? String(describing: node).lowercased()
            let here = path + [name]
            if node == command { return here }
            for child in node.configuration.subcommands {
                if let found = search(child, here) { return found }
            }
            return nil
        }
        return search(Plugboard.self, []) ?? ["plugboard"]
    }
}

/// Writes `text` to stderr.
func writeToStandardError(_ text: String) {
    write(all: Array(text.utf8), to: 2)
}

/// Where the daemon is: `--socket PATH` (or `-H PATH`), before or after the subcommand.
struct Connection: ParsableArguments {
    @Option(
        name: [.customLong("socket"), .customShort("H")],
        help: ArgumentHelp("The daemon's admin socket (default: $PLUGBOARD_SOCKET, else the daemon's default path), or tcp://HOST:PORT for a daemon's --admin-listen (mutual TLS: --tls-cert, --tls-key, --tls-ca). Also before the command: plugboard -H PATH plugin ls.", valueName: "path"),
        completion: .file()
    )
    var socket: String?

    @Option(name: .customLong("tls-cert"), help: ArgumentHelp("With -H tcp://: this client's certificate, PEM (default $PLUGBOARD_TLS_CERT).", valueName: "file"), completion: .file())
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("With -H tcp://: its private key, PEM (default $PLUGBOARD_TLS_KEY).", valueName: "file"), completion: .file())
    var tlsKey: String?

    @Option(name: .customLong("tls-ca"), help: ArgumentHelp("With -H tcp://: the CA bundle the daemon's certificate must chain to, PEM (default $PLUGBOARD_TLS_CA).", valueName: "file"), completion: .file())
    var tlsCA: String?

    /// The socket: the option, else `$PLUGBOARD_SOCKET`, else the default path.
    var path: String {
        AdminClient.path(given: socket)
    }

    /// A client of that socket.
    var client: AdminClient {
        var client = AdminClient(path: path)
        client.tlsFlags = (tlsCert, tlsKey, tlsCA)
        return client
    }

    /// Sends one admin request and returns its reply, or throws an error a person can act on.
    func send<R: AdminRequest>(_ request: R, timeout: Duration = AdminClient.noCut) async throws -> R.Reply {
        try await client.send(request, timeout: timeout)
    }

    /// Opens a session and its admin channel.
    func open() async throws -> (Session, Sender) {
        try await client.open()
    }
}

/// A client of one admin socket.
struct AdminClient: Sendable {
    /// The socket's path, or `tcp://HOST:PORT`.
    let path: String
    /// `--tls-cert`, `--tls-key`, `--tls-ca` (each falls back to its PLUGBOARD_TLS_* variable).
    var tlsFlags: (cert: String?, key: String?, ca: String?) = (nil, nil, nil)
    /// How long the HELLO exchange may take.
    var handshakeTimeout: Duration = .seconds(5)

    /// A wait longer than any deadline the daemon applies (it clamps them to one day): the
    /// CLI never cuts a request the daemon is still working on.
    static let noCut: Duration = Duration.longestAccepted + .seconds(60)

    /// `given`, else `$PLUGBOARD_SOCKET`, else the daemon's default path.
    static func path(given: String?) -> String {
        if let given, !given.isEmpty { return given }
        if let env = ProcessInfo.processInfo.environment["PLUGBOARD_SOCKET"], !env.isEmpty { return env }
        return AdminSocket.defaultPath()
    }

    /// Sends one admin request and returns its reply, or throws an error a person can act on.
    func send<R: AdminRequest>(_ request: R, timeout: Duration = AdminClient.noCut) async throws -> R.Reply {
        let (session, channel) = try await open()
        defer { session.close(reason: "done") }
        do {
            return try R.decodeReply(try await channel.request(try request.wireBody(), timeout: timeout))
        } catch let error as ChanError where error.code == .remote {
            // The code travels with the message: scripts can match on it.
            throw CLIError(remote: error)
        } catch let error as AdminError {
            throw CLIError(error.message, code: error.code.rawValue)
        }
    }

    /// Opens a session and its admin channel.
    func open() async throws -> (Session, Sender) {
        let logger = Logger(label: "plugboard", factory: { _ in SwiftLogNoOpLogHandler() })
        if path.hasPrefix("tcp://") { return try await openTCP(logger: logger) }
        var info = stat()
        if stat(path, &info) != 0 {
            throw CLIError("plugboardd is not running: nothing at \(path) (use --socket or PLUGBOARD_SOCKET if it listens elsewhere)", code: "cli.not-running")
        }
        let session: Session
        do {
            session = try await Session.connect(unixSocketPath: path, configuration: .init(name: "plugboard", handshakeTimeout: handshakeTimeout), logger: logger)
        } catch {
            let text = "\(error)"
            if text.contains("Permission denied") || text.contains("EACCES") {
                throw CLIError("permission denied on \(path): run as the daemon's user or root", code: "cli.permission-denied")
            }
            throw CLIError("plugboardd is not running: cannot connect to \(path) (\(text))", code: "cli.not-running")
        }
        do {
            try await session.start()
        } catch let error as ChanError where error.code == .peerGone {
            session.close(reason: "refused")
            throw CLIError("plugboardd at \(path) refused this connection: uid \(getuid()) is not allowed (only root, the daemon's user and --admin-group)", code: "cli.refused")
        } catch {
            session.close(reason: "no handshake")
            throw CLIError("plugboardd at \(path) did not complete the handshake: \(error)", code: "cli.handshake")
        }
        return (session, try session.open(label: AdminSocket.channelLabel))
    }
}

/// A failure the CLI reports: what happened, and a code scripts can match on (the daemon's
/// wire code for a refused request, `cli.*` for the CLI's own).
struct CLIError: Error, CustomStringConvertible {
    /// What happened, for a person.
    let message: String
    /// The code: `engine.unknown-plugin`, `routing.timeout`, `cli.not-running`, ….
    let code: String
    /// Whether the text form shows the code after the message.
    let showsCode: Bool

    init(_ message: String, code: String = "cli.error", showsCode: Bool = false) {
        self.message = message
        self.code = code
        self.showsCode = showsCode
    }

    /// The daemon's refusal: its message and its code.
    init(remote error: ChanError) {
        self.init(error.reason, code: error.remoteCode ?? "unknown", showsCode: true)
    }

    var description: String { showsCode ? "\(message) [\(code)]" : message }
}

/// How a command prints what it answers: for people, or as JSON.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// How a listing prints: a table, or JSON.
enum ListFormat: String, ExpressibleByArgument, CaseIterable {
    case table, json
}

/// `--format` for a command whose answer is a short acknowledgement.
struct FormatOption: ParsableArguments {
    @Option(help: "text, or json (errors too, on stderr).")
    var format: OutputFormat = .text

    /// Prints `text`, or `json` as JSON.
    func print(_ text: String, json: some Encodable) throws {
        if format == .json { return try CLIOutput.printJSON(json) }
        Swift.print(text)
    }
}

/// The options every listing takes: `--format table|json` and `-q`.
struct ListingOptions: ParsableArguments {
    @Option(help: "table, or json (errors too, on stderr).")
    var format: ListFormat = .table

    @Flag(name: .shortAndLong, help: "Only the names (ids for containers), one a line; with --format json, a JSON array of them.")
    var quiet = false

    /// Prints `rows` as the options say: names, JSON or a table.
    func print<Row: Encodable>(_ rows: [Row], header: [String], name: (Row) -> String, row: (Row) -> [String]) throws {
        if quiet {
            var seen = Set<String>()
            let names = rows.map(name).filter { seen.insert($0).inserted }
            if format == .json { return try CLIOutput.printJSON(names) }
            for n in names { Swift.print(n) }
            return
        }
        if format == .json { return try CLIOutput.printJSON(rows) }
        printTable(header, rows.map(row))
    }
}

/// JSON output: sorted keys, no `\/`, empty lists as `[]`.
enum CLIOutput {
    /// Whether the command line asks for JSON (`--format json` or `--format=json` before
    /// any `--`): decided from the words, so a parse error is JSON too.
    static func jsonRequested(_ arguments: [String]) -> Bool {
        let words = arguments.prefix { $0 != "--" }
        if words.contains("--format=json") { return true }
        return zip(words, words.dropFirst()).contains { $0 == "--format" && $1 == "json" }
    }

    /// `value` as indented JSON.
    static func json(_ value: some Encodable, pretty: Bool = true) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        let text = String(decoding: try encoder.encode(value), as: UTF8.self)
        // Foundation writes an empty list or map across lines ("[\n\n]"); a raw newline is
        // never inside a JSON string, so this touches formatting only.
        return pretty ? text.replacingOccurrences(of: #"\[\s*\]"#, with: "[]", options: .regularExpression)
            .replacingOccurrences(of: #"\{\s*\}"#, with: "{}", options: .regularExpression) : text
    }

    /// Prints `value` as indented JSON.
    static func printJSON(_ value: some Encodable) throws {
        print(try json(value))
    }

    /// Writes `{"error": {"code", "message"}}` to stderr.
    static func writeError(code: String, message: String) {
        struct Failure: Encodable {
            struct Body: Encodable {
                let code: String
                let message: String
            }
            let error: Body
        }
        let text = (try? json(Failure(error: .init(code: code, message: message)), pretty: false)) ?? #"{"error":{"code":"cli.error","message":"unprintable"}}"#
        writeToStandardError(text + "\n")
    }
}

/// Output as JSON (a Value's, or a reply's, Codable form).
func printJSON(_ value: some Encodable) throws {
    try CLIOutput.printJSON(value)
}

/// A table with left-aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i] + 3, withPad: " ", startingAt: 0) }.joined()
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

func text(_ v: Value?) -> String {
    switch v {
    case .none, .nil?: return "-"
    case .string(let s)?: return s
    case let other?: return other.description
    }
}

/// A duration typed by a person: `500ms`, `2s`, `1.5s`, `2m`, `1h`, `1d`, or a bare number
/// of seconds; at most one day.
struct TimeSpan: ExpressibleByArgument, Sendable {
    let duration: Duration

    init(_ duration: Duration) { self.duration = duration }

    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)]
        var seconds: Double?
        for (suffix, scale) in units where argument.hasSuffix(suffix) {
            if let n = Double(argument.dropLast(suffix.count)) { seconds = n * scale }
            break
        }
        if seconds == nil { seconds = Double(argument) }
        guard let seconds, seconds.isFinite, seconds >= 0, seconds <= Double(Duration.longestAccepted.components.seconds) else { return nil }
        duration = .clampedSeconds(seconds)
    }

    var defaultValueDescription: String { duration.short }

    static var defaultCompletionKind: CompletionKind { .list(["500ms", "5s", "30s", "2m"]) }
}

/// A command that prints its version: `plugboard version`.
struct VersionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Show the versions of this client and of the daemon, and the protocol each speaks.",
        discussion: "Without a daemon it prints the client's and fails. plugboard --version prints the client's alone."
    )
    @OptionGroup var connection: Connection
    @OptionGroup var output: FormatOption

    struct Report: Encodable {
        var client: Admin.VersionInfo
        var daemon: Admin.VersionInfo?
        var socket: String
    }

    func run() async throws {
        let client = Admin.VersionInfo.current
        let daemon: Admin.VersionInfo
        do {
            daemon = try await connection.send(Admin.Version(), timeout: .seconds(10))
        } catch let error as CLIError where error.code == AdminError.Code.unknownCommand.rawValue {
            // A daemon from before `version`: it answers, but cannot say which it is.
            if output.format == .json { try CLIOutput.printJSON(Report(client: client, daemon: nil, socket: connection.path)) } else {
                print("Client: plugboard \(client.version) (protocol \(client.protocolVersion))")
                print("Daemon: plugboardd older than 0.1.0 (it has no version command) at \(connection.path)")
            }
            return
        } catch let error as CLIError {
            if output.format == .text { print("Client: plugboard \(client.version) (protocol \(client.protocolVersion))") }
            throw error
        }
        if output.format == .json { return try CLIOutput.printJSON(Report(client: client, daemon: daemon, socket: connection.path)) }
        print("Client: plugboard \(client.version) (protocol \(client.protocolVersion))")
        print("Daemon: plugboardd \(daemon.version) (protocol \(daemon.protocolVersion)) at \(connection.path)")
    }
}
