#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import ArgumentParser
import Chan
import Foundation

struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call a job with a JSON argument and print the reply as JSON.",
        discussion: """
            Examples:
              plugboard call echo '{"hello": "world"}'
              plugboard call --best volume.driver '{"op": "create", "name": "data"}'   # the best provider of an extension point
              plugboard call --all volume.driver '{"op": "list"}'                      # every provider, best first
            """
    )
    @OptionGroup var connection: Connection
    @Argument(help: "The job (or, with --best/--all, the extension point).") var job: String
    @Argument(help: "The argument, as JSON (default null).") var json: String?
    @Flag(help: "Call the best provider of the extension point; fail over in rank order if it goes away.") var best = false
    @Flag(help: "Call every provider of the extension point, best first; print each answer or error.") var all = false
    @Flag(help: "Hand the job a byte stream of this command's stdin: the argument itself, or its \"stdin\" field when the JSON is a map.") var stdin = false

    func run() async throws {
        var argument: Value = .nil
        if let json {
            do {
                argument = try JSONDecoder().decode(Value.self, from: Data(json.utf8))
            } catch {
                throw ValidationError("the argument is not valid JSON: \(json)")
            }
        }
        if best && all { throw ValidationError("give --best or --all, not both") }
        if best { return try printJSON(try await connection.send(Admin.CallBest(point: job, argument: argument))) }
        if all { return try printJSON(try await connection.send(Admin.CallAll(point: job, argument: argument))) }
        // The session stays open while streams flow: stdin up, a result's stream down.
        let (session, channel) = try await connection.open()
        defer { session.close(reason: "done") }
        var upload: ByteStreamWriter?
        if stdin {
            let (writer, reader) = try session.makeByteStream()
            upload = writer
            if case .map(var entries) = argument {
                entries.append((key: "stdin", value: .channel(.byteStreamReader(reader))))
                argument = .map(entries)
            } else {
                argument = .channel(.byteStreamReader(reader))
            }
        }
        let pending = try await channel.startRequest(try Admin.Call(job: job, argument: argument).wireBody(), timeout: .seconds(60))
        if let upload {
            try await copyStandardInput(to: upload)
        }
        let result: Value
        do {
            result = try await pending.reply()
        } catch let error as ChanError where error.code == .remote {
            throw CLIError("\(error.reason) [\(error.remoteCode ?? "unknown")]")
        }
        if case .channel(.byteStreamReader(let reader)) = result {
            return try await copy(reader, to: 1)
        }
        try printJSON(result)
    }
}

/// A registry listing: one admin request, printed as a table or JSON.
protocol RegistryListing: AsyncParsableCommand {
    associatedtype Listing: AdminRequest where Listing.Reply: Sequence, Listing.Reply.Element: Encodable
    var connection: Connection { get }
    var format: OutputFormat { get }
    static var request: Listing { get }
    static var header: [String] { get }
    static func row(_ row: Listing.Reply.Element) -> [String]
}

extension RegistryListing {
    func run() async throws {
        let rows = Array(try await connection.send(Self.request))
        if format == .json { return try printJSON(rows) }
        printTable(Self.header, rows.map(Self.row))
    }
}

struct Endpoints: RegistryListing {
    static let configuration = CommandConfiguration(abstract: "List the jobs and who serves them.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table
    static var request: Admin.Endpoints { Admin.Endpoints() }
    static let header = ["NAME", "KIND", "OWNER", "RANK", "PRIORITY", "STATE"]
    static func row(_ r: Admin.EndpointRow) -> [String] {
        [r.job, r.kind, r.owner, r.rank.map { "\($0)" } ?? "-", r.priority.map { "\($0)" } ?? "-", r.restarting ? "waiting for owner" : "active"]
    }
}

struct HooksList: RegistryListing {
    static let configuration = CommandConfiguration(commandName: "hooks", abstract: "List the hooks, in the order they run.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table
    static var request: Admin.Hooks { Admin.Hooks() }
    static let header = ["EVENT", "PHASE", "PLUGIN", "PRIORITY", "POLICY", "TIMEOUT"]
    static func row(_ r: Admin.HookRow) -> [String] { [r.event, r.phase, r.owner, "\(r.priority)", r.policy, r.timeout] }
}

/// `plugboard pipeline`: list the registrations (the default), or send a message.
struct PipelineGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "List the pipeline registrations, or send a message into the pipeline.",
        subcommands: [PipelineList.self, PipelineSend.self],
        defaultSubcommand: PipelineList.self
    )
}

struct PipelineSend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send a message into the pipeline and print the path, plugin by plugin, and what came out.",
        discussion: "Example: plugboard pipeline send container.log '{\"line\": \"password=hunter2\"}'"
    )
    @OptionGroup var connection: Connection
    @Argument(help: "The message's type.") var type: String
    @Argument(help: "Its body, as JSON (default null).") var json: String?
    @Option(help: "table or json.") var format: OutputFormat = .table

    func run() async throws {
        var body: Value = .nil
        if let json {
            do {
                body = try JSONDecoder().decode(Value.self, from: Data(json.utf8))
            } catch {
                throw ValidationError("the body is not valid JSON: \(json)")
            }
        }
        let run = try await connection.send(Admin.PipelineSend(type: type, body: body))
        if format == .json { return try printJSON(run) }
        func show(_ m: Admin.PipelineRun.Message) -> String { "\(m.type) \(compactJSON(m.body))" }
        printTable(["RUN", "PLUGIN", "IN", "OUT"], run.path.map { step in
            ["\(step.run)", step.plugin, show(step.input), step.output.isEmpty ? "(dropped)" : step.output.map(show).joined(separator: "; ")]
        })
        print("")
        for s in run.skipped { print("skipped: \(s.plugin) (\(s.reason))") }
        print(run.final.isEmpty ? "no message came out" : "out: " + run.final.map(show).joined(separator: "; "))
    }
}

/// A value as one line of JSON.
func compactJSON(_ value: Value) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "\(value)"
}

struct PipelineList: RegistryListing {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the pipeline registrations, in routing order (the default).")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table
    static var request: Admin.Pipeline { Admin.Pipeline() }
    static let header = ["TYPE", "PLUGIN", "PRIORITY"]
    static func row(_ r: Admin.PipelineRow) -> [String] { [r.type, r.owner, "\(r.priority)"] }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow the daemon's events as they happen, like `docker events`.",
        discussion: """
            Types: plugin.STATE (starting, active, restarting, failed, disabled, stopped), registration.added,
            registration.withdrawn, hook.outcome, container.started, container.exited, container.removed, and
            whatever plugins publish (events.publish). A reader that falls behind gets an events.lost record
            with the count. Examples:
              plugboard events --type 'plugin.*' --filter plugin=audit
              plugboard events --type container.exited --format json
            """
    )
    @OptionGroup var connection: Connection
    @Option(help: ArgumentHelp("Only events of this type; a trailing * matches a prefix (repeatable).", valueName: "type")) var type: [String] = []
    @Option(help: ArgumentHelp("Only events whose attribute KEY equals VALUE (repeatable).", valueName: "key=value")) var filter: [String] = []
    @Option(help: "table or json (one object per line).") var format: OutputFormat = .table

    func run() async throws {
        var attributes: [String: String] = [:]
        for f in filter {
            let kv = f.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw ValidationError("--filter takes KEY=VALUE, not \(f)") }
            attributes[kv[0]] = kv[1]
        }
        let (session, channel) = try await connection.open()
        defer { session.close(reason: "done") }
        let (sink, events) = try session.makePipe()
        _ = try await channel.request(try Admin.Events(sink: sink, types: type, attributes: attributes).wireBody())
        // The daemon subscribed before answering: from here on no event is missed.
        var notice = Array("plugboard: following events at \(connection.path) (Ctrl-C to stop)\n".utf8)
        _ = write(2, &notice, notice.count)
        for try await event in events {
            if format == .json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(event), as: UTF8.self))
            } else {
                let rest = (event.mapValue ?? []).compactMap { e -> String? in
                    guard let k = e.key.stringValue, !["seq", "time", "type"].contains(k) else { return nil }
                    return "\(k)=\(text(e.value))"
                }
                print("\(text(event["time"])) \(text(event["type"])) \(rest.joined(separator: " "))")
            }
            fflush(nil)
        }
    }
}

struct MetricsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print the daemon's metrics in the Prometheus text format.",
        discussion: "The same text plugboardd serves at http://HOST:PORT/metrics with --metrics-listen."
    )
    @OptionGroup var connection: Connection

    func run() async throws {
        let text = try await connection.send(Admin.Call(job: "metrics.scrape"))
        print(text.stringValue ?? "", terminator: "")
    }
}

/// Copies this process's stdin to `writer` until end of file, then closes it. The reads
/// block, so they run on a thread of their own, one chunk at a time.
func copyStandardInput(to writer: ByteStreamWriter) async throws {
    while true {
        let chunk: [UInt8] = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 65_536)
                var n: Int
                repeat { n = read(0, &buffer, buffer.count) } while n < 0 && errno == EINTR
                continuation.resume(returning: n > 0 ? Array(buffer[0..<n]) : [])
            }
        }
        if chunk.isEmpty { break }
        try await writer.write(chunk)
    }
    writer.close()
}
