#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import ArgumentParser
import Chan
import Foundation

/// `plugboard container ...`: the container lifecycle that the built-in `containers`
/// plugin serves (plugboardd --plugin containers). Each command calls a container.* job.
struct ContainerGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "container",
        abstract: "Create, start, stop and remove containers (the containers plugin, on runc).",
        discussion: "The daemon must run the containers plugin: plugboardd --plugin containers. Every container.create goes through the container.create hooks; inspect shows which plugin changed which field.",
        subcommands: [Run.self, Create.self, Start.self, Stop.self, Wait.self, Remove.self, List.self, Inspect.self, Logs.self]
    )

    /// What a container is made from, as create and run take it.
    struct SpecOptions: ParsableArguments {
        @Option(help: ArgumentHelp("The root file system: a directory (mounted read-only).", valueName: "dir")) var rootfs: String
        @Option(help: "A name (default: the id).") var name: String?
        @Option(name: .customShort("e"), help: ArgumentHelp("An environment variable (repeatable).", valueName: "key=value")) var env: [String] = []
        @Option(help: ArgumentHelp("A label (repeatable).", valueName: "key=value")) var label: [String] = []
        @Option(help: "The host name inside (default: the name).") var hostname: String?
        @Option(help: "The working directory inside (default /).") var workdir: String?
        @Option(name: [.customShort("v"), .customLong("volume")], help: ArgumentHelp("A volume: NAME:/path[:ro], from the volume driver (repeatable).", valueName: "name:path")) var volume: [String] = []
        @Option(help: ArgumentHelp("The plugin that provides volume.driver to ask (default: the best provider).", valueName: "plugin")) var volumeDriver: String?
        @Argument(parsing: .captureForPassthrough, help: "The command and its arguments, after --.") var command: [String] = []

        var arguments: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

        func validate() throws {
            guard !arguments.isEmpty else { throw ValidationError("give the command to run after --, e.g. -- sh -c 'echo hi'") }
            for l in label where l.split(separator: "=", maxSplits: 1).count != 2 { throw ValidationError("--label takes KEY=VALUE, not \(l)") }
            for e in env where !e.contains("=") { throw ValidationError("-e takes KEY=VALUE, not \(e)") }
            for text in volume {
                let parts = text.split(separator: ":").map(String.init)
                guard parts.count == 2 || (parts.count == 3 && parts[2] == "ro"), parts[1].hasPrefix("/") else {
                    throw ValidationError("-v takes NAME:/path or NAME:/path:ro, not \(text)")
                }
            }
        }

        var value: Value {
            get throws {
                try validate()
                let args = arguments
                var labels: [(key: Value, value: Value)] = []
                for l in label {
                    let parts = l.split(separator: "=", maxSplits: 1).map(String.init)
                    labels.append((key: .string(parts[0]), value: .string(parts[1])))
                }
                var fields: [(String, Value)] = [
                    ("rootfs", .string(URL(fileURLWithPath: rootfs).standardizedFileURL.path)),
                    ("args", .array(args.map { .string($0) })),
                    ("env", .array(env.map { .string($0) })),
                    ("labels", .map(labels)),
                ]
                if let name { fields.append(("name", .string(name))) }
                if let hostname { fields.append(("hostname", .string(hostname))) }
                if let workdir { fields.append(("workdir", .string(workdir))) }
                if !volume.isEmpty {
                    fields.append(("volumes", .array(volume.map { text in
                        let parts = text.split(separator: ":").map(String.init)
                        var v: [(String, Value)] = [("name", .string(parts[0])), ("destination", .string(parts[1])), ("readonly", .bool(parts.count == 3))]
                        if let volumeDriver { v.append(("driver", .string(volumeDriver))) }
                        return .map(v.map { (key: .string($0.0), value: $0.1) })
                    })))
                }
                return .map(fields.map { (key: .string($0.0), value: $0.1) })
            }
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create and start a container, pass its output through, and exit with its exit code.",
            discussion: "Example: plugboard container run --rootfs ./rootfs --name hello -e GREETING=hi -- sh -c 'echo $GREETING'\nWith --rm the container is removed once it has exited, or at once when its start fails (a container.start hook vetoed it). --format json applies to errors only: the output passes through as it is."
        )
        @OptionGroup var connection: Connection
        @Flag(help: "Remove the container after it exits, or when it cannot start.") var rm = false
        @Option(help: "text, or json (errors only, on stderr).") var format: OutputFormat = .text
        @OptionGroup var spec: SpecOptions

        func run() async throws {
            let (session, channel) = try await connection.open()
            defer { session.close(reason: "done") }
            let created = try await callJob(channel, "container.create", try spec.value)
            let id = text(created["id"])
            let waited: Value
            do {
                // Follow before starting: the log keeps everything from the start anyway.
                let (outWriter, outReader) = try session.makeByteStream()
                let (errWriter, errReader) = try session.makeByteStream()
                _ = try await callJob(channel, "container.logs", .fields(
                    ("id", .string(id)), ("follow", true),
                    ("stdout", .channel(.byteStreamWriter(outWriter))), ("stderr", .channel(.byteStreamWriter(errWriter)))
                ))
                _ = try await callJob(channel, "container.start", .fields(("id", .string(id))))
                async let o: Void = copy(outReader, to: 1)
                async let e: Void = copy(errReader, to: 2)
                _ = try await (o, e)
                // It may run as long as it likes: the wait has no deadline short of the daemon's longest.
                waited = try await callJob(channel, "container.wait", .fields(("id", .string(id)), ("timeout_ms", .int(Duration.longestAccepted.saturatingMilliseconds))), timeout: .longestAccepted)
            } catch {
                // A start that failed (a vetoed container.start) leaves a created container: --rm removes it.
                if rm { _ = try? await callJob(channel, "container.rm", .fields(("id", .string(id)), ("force", true))) }
                throw error
            }
            if rm { _ = try await callJob(channel, "container.rm", .fields(("id", .string(id)))) }
            guard let code = waited["exit_code"]?.intValue else { throw CLIError("container \(id) ended without an exit code") }
            if code != 0 { throw ExitCode(Int32(truncatingIfNeeded: code)) }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a container (the container.create hooks run); print its id.",
            discussion: "Example: plugboard container create --rootfs ./rootfs --name web -- httpd -f"
        )
        @OptionGroup var connection: Connection
        @OptionGroup var output: FormatOption
        @OptionGroup var spec: SpecOptions
        func run() async throws {
            let created = try await connection.job("container.create", try spec.value)
            try output.print(text(created["id"]), json: created)
        }
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a created container (the container.start hooks run first).")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.", completion: DaemonNames.containers) var container: String
        @OptionGroup var output: FormatOption
        func run() async throws {
            let r = try await connection.job("container.start", .fields(("id", .string(container))))
            try output.print(text(r["id"]), json: r)
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a running container: SIGTERM, then SIGKILL after --timeout.")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.", completion: DaemonNames.containers) var container: String
        @Option(help: ArgumentHelp("Time between SIGTERM and SIGKILL: 10s, 500ms, or seconds.", valueName: "duration")) var timeout = TimeSpan(.seconds(10))
        @OptionGroup var output: FormatOption
        func run() async throws {
            let r = try await connection.job(
                "container.stop", .fields(("id", .string(container)), ("timeout_ms", .int(timeout.duration.saturatingMilliseconds))),
                timeout: timeout.duration + .seconds(30)
            )
            try output.print("\(text(r["name"])) exit_code=\(text(r["exit_code"]))", json: r)
        }
    }

    struct Wait: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Wait until a container exits; print its exit code, like `docker wait`.",
            discussion: "Without --timeout it waits as long as the container runs (up to a day, the longest the daemon waits)."
        )
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.", completion: DaemonNames.containers) var container: String
        @Option(help: ArgumentHelp("Give up after this long: 30s, 5m, 1h.", valueName: "duration")) var timeout: TimeSpan?
        @OptionGroup var output: FormatOption
        func run() async throws {
            let limit = timeout?.duration ?? .longestAccepted
            let r = try await connection.job(
                "container.wait", .fields(("id", .string(container)), ("timeout_ms", .int(limit.saturatingMilliseconds))), timeout: limit
            )
            try output.print(text(r["exit_code"]), json: r)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a container (a running one only with --force, which stops it).")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.", completion: DaemonNames.containers) var container: String
        @Flag(help: "Stop it first if it runs.") var force = false
        @OptionGroup var output: FormatOption
        func run() async throws {
            let r = try await connection.job("container.rm", .fields(("id", .string(container)), ("force", .bool(force))))
            try output.print(text(r["name"]), json: r)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the containers.", discussion: "Example: plugboard container ls -q   # ids only")
        @OptionGroup var connection: Connection
        @OptionGroup var listing: ListingOptions
        func run() async throws {
            let rows = (try await connection.job("container.ls", .nil)).arrayValue ?? []
            try listing.print(rows, header: ["ID", "NAME", "STATE", "EXIT", "COMMAND", "CREATED"], name: { text($0["id"]) }) {
                [text($0["id"]), text($0["name"]), text($0["state"]), $0["exit_code"] == .nil ? "-" : text($0["exit_code"]), text($0["command"]), text($0["created"])]
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a container: its spec, its state, and which plugin changed which field.",
            discussion: "\"changed_by\" maps each field the container.create hooks set to the plugin that set it; \"hooks\" lists the hooks that ran, in order.\nExample: plugboard container inspect web --format state"
        )
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.", completion: DaemonNames.containers) var container: String
        @OptionGroup var inspect: InspectFormat
        func run() async throws { try inspect.print(try await connection.job("container.inspect", .fields(("id", .string(container))))) }
    }

    struct Logs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a container's output (the last MiB kept); --follow waits for more until it exits.",
            discussion: "--format json applies to errors only: the output passes through as it is."
        )
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.", completion: DaemonNames.containers) var container: String
        @Flag(name: .shortAndLong, help: "Keep printing until the container exits.") var follow = false
        @Option(help: "text, or json (errors only, on stderr).") var format: OutputFormat = .text
        func run() async throws {
            guard follow else {
                let r = try await connection.job("container.logs", .fields(("id", .string(container))))
                for chunk in r["chunks"]?.arrayValue ?? [] {
                    let bytes = chunk["data"]?.binaryValue ?? []
                    write(all: bytes, to: chunk["stream"]?.stringValue == "stderr" ? 2 : 1)
                }
                return
            }
            let (session, channel) = try await connection.open()
            defer { session.close(reason: "done") }
            let (outWriter, outReader) = try session.makeByteStream()
            let (errWriter, errReader) = try session.makeByteStream()
            _ = try await callJob(channel, "container.logs", .fields(
                ("id", .string(container)), ("follow", true),
                ("stdout", .channel(.byteStreamWriter(outWriter))), ("stderr", .channel(.byteStreamWriter(errWriter)))
            ))
            async let o: Void = copy(outReader, to: 1)
            async let e: Void = copy(errReader, to: 2)
            _ = try await (o, e)
        }
    }
}

extension Connection {
    /// Calls a job through the admin socket.
    func job(_ name: String, _ argument: Value, timeout: Duration = .seconds(30)) async throws -> Value {
        let (session, channel) = try await open()
        defer { session.close(reason: "done") }
        return try await callJob(channel, name, argument, timeout: timeout)
    }
}

/// Calls `job` on an open admin channel with the deadline `timeout` (the daemon's, sent as
/// `timeout_ms`; this end waits a little longer, so the daemon's answer arrives first); an
/// unknown container.* job says how to load the plugin.
func callJob(_ channel: Sender, _ job: String, _ argument: Value, timeout: Duration = .seconds(30)) async throws -> Value {
    do {
        let reply = try await channel.request(
            try Admin.Call(job: job, argument: argument, timeoutMilliseconds: timeout.saturatingMilliseconds).wireBody(),
            timeout: timeout + .seconds(5)
        )
        return try Admin.Call.decodeReply(reply)
    } catch let error as ChanError where error.code == .remote {
        let jobMissing = [AdminError.Code.routing("unknown job"), .routing("owner gone")].map(\.rawValue).contains(error.remoteCode ?? "")
        if jobMissing && job.hasPrefix("container.") {
            throw CLIError("\(error.reason)\nThe container commands need the containers plugin: start plugboardd with --plugin containers.", code: error.remoteCode ?? "unknown")
        }
        throw CLIError(remote: error)
    }
}

/// Copies a byte stream to a file descriptor until it ends.
func copy(_ reader: ByteStreamReader, to fd: CInt) async throws {
    while let bytes = try await reader.read() {
        write(all: bytes, to: fd)
    }
}

func write(all bytes: [UInt8], to fd: CInt) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return }
        offset += n
    }
}
