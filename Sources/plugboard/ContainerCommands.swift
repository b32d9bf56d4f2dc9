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
        subcommands: [Run.self, Create.self, Start.self, Stop.self, Remove.self, List.self, Inspect.self, Logs.self]
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

        var value: Value {
            get throws {
                let args = command.first == "--" ? Array(command.dropFirst()) : command
                guard !args.isEmpty else { throw ValidationError("give the command to run after --, e.g. -- sh -c 'echo hi'") }
                var labels: [(key: Value, value: Value)] = []
                for l in label {
                    let parts = l.split(separator: "=", maxSplits: 1).map(String.init)
                    guard parts.count == 2 else { throw ValidationError("--label takes KEY=VALUE, not \(l)") }
                    labels.append((key: .string(parts[0]), value: .string(parts[1])))
                }
                for e in env where !e.contains("=") { throw ValidationError("-e takes KEY=VALUE, not \(e)") }
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
                    fields.append(("volumes", .array(try volume.map { text in
                        let parts = text.split(separator: ":").map(String.init)
                        guard parts.count == 2 || (parts.count == 3 && parts[2] == "ro"), parts[1].hasPrefix("/") else {
                            throw ValidationError("-v takes NAME:/path or NAME:/path:ro, not \(text)")
                        }
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
            discussion: "Example: plugboard container run --rootfs ./rootfs --name hello -e GREETING=hi -- sh -c 'echo $GREETING'"
        )
        @OptionGroup var connection: Connection
        @Flag(help: "Remove the container after it exits.") var rm = false
        @OptionGroup var spec: SpecOptions

        func run() async throws {
            let (session, channel) = try await connection.open()
            defer { session.close(reason: "done") }
            let created = try await callJob(channel, "container.create", try spec.value)
            let id = text(created["id"])
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
            let waited = try await callJob(channel, "container.wait", .fields(("id", .string(id))), timeout: .seconds(60))
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
        @OptionGroup var spec: SpecOptions
        func run() async throws {
            let created = try await connection.job("container.create", try spec.value)
            print(text(created["id"]))
        }
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a created container (the container.start hooks run first).")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.") var container: String
        func run() async throws {
            let r = try await connection.job("container.start", .fields(("id", .string(container))))
            print(text(r["id"]))
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a running container: SIGTERM, then SIGKILL after --timeout seconds.")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.") var container: String
        @Option(help: "Seconds between SIGTERM and SIGKILL.") var timeout: Double = 10
        func run() async throws {
            let r = try await connection.job(
                "container.stop", .fields(("id", .string(container)), ("timeout_ms", .int(Duration.clampedSeconds(timeout).saturatingMilliseconds))),
                timeout: .clampedSeconds(timeout) + .seconds(30)
            )
            print("\(text(r["name"])) exit_code=\(text(r["exit_code"]))")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a container (a running one only with --force, which stops it).")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.") var container: String
        @Flag var force = false
        func run() async throws {
            let r = try await connection.job("container.rm", .fields(("id", .string(container)), ("force", .bool(force))))
            print(text(r["name"]))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the containers.")
        @OptionGroup var connection: Connection
        @Option(help: "table or json.") var format: OutputFormat = .table
        func run() async throws {
            let rows = try await connection.job("container.ls", .nil)
            if format == .json { return try printJSON(rows) }
            printTable(["ID", "NAME", "STATE", "EXIT", "COMMAND", "CREATED"], (rows.arrayValue ?? []).map {
                [text($0["id"]), text($0["name"]), text($0["state"]), $0["exit_code"] == .nil ? "-" : text($0["exit_code"]), text($0["command"]), text($0["created"])]
            })
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a container: its spec, its state, and which plugin changed which field.",
            discussion: "\"changed_by\" maps each field the container.create hooks set to the plugin that set it; \"hooks\" lists the hooks that ran, in order."
        )
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.") var container: String
        func run() async throws { try printJSON(try await connection.job("container.inspect", .fields(("id", .string(container))))) }
    }

    struct Logs: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a container's output (the last MiB kept); --follow waits for more until it exits.")
        @OptionGroup var connection: Connection
        @Argument(help: "Its id or name.") var container: String
        @Flag(name: .shortAndLong, help: "Keep printing until the container exits.") var follow = false
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

/// Calls `job` on an open admin channel; an unknown container.* job says how to load the plugin.
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
            throw CLIError("\(error.reason)\nThe container commands need the containers plugin: start plugboardd with --plugin containers.")
        }
        throw CLIError("\(error.reason) [\(error.remoteCode ?? "unknown")]")
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
