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
            The call may take as long as --timeout says; without it the daemon's default applies (10s), and this command never cuts the call shorter.
            Examples:
              plugboard call echo '{"hello": "world"}'
              plugboard call --timeout 5m backup.run
              plugboard call --best volume.driver '{"op": "create", "name": "data"}'   # the best provider of an extension point
              plugboard call --all volume.driver '{"op": "list"}'                      # every provider, best first
            """
    )
    @OptionGroup var connection: Connection
    @Argument(help: "The job (or, with --best/--all, the extension point).", completion: DaemonNames.jobs) var job: String
    @Argument(help: "The argument, as JSON (default null).") var json: String?
    @Flag(help: "Call the best provider of the extension point; fail over in rank order if it goes away.") var best = false
    @Flag(help: "Call every provider of the extension point, best first; print each answer or error.") var all = false
    @Flag(help: "Hand the job a byte stream of this command's stdin: the argument itself, or its \"stdin\" field when the JSON is a map.") var stdin = false
    @Option(help: ArgumentHelp("How long the job may take: 500ms, 30s, 5m, at most 1d (default: the daemon's, 10s).", valueName: "duration")) var timeout: TimeSpan?
    @Option(help: "json (the default), or text: a string result as it is, anything else as JSON. A byte-stream result is copied to stdout either way.") var format: CallFormat = .json

    enum CallFormat: String, ExpressibleByArgument, CaseIterable { case json, text }

    func validate() throws {
        if best && all { throw ValidationError("give --best or --all, not both") }
        if let json, (try? JSONDecoder().decode(Value.self, from: Data(json.utf8))) == nil {
            throw ValidationError("the argument is not valid JSON: \(json)")
        }
        if let timeout, timeout.duration <= .zero { throw ValidationError("--timeout must be longer than 0") }
    }

    /// The deadline sent to the daemon (absent: the daemon's default), and how long this
    /// end waits for the answer: a little longer than that, so the daemon's own timeout
    /// error (naming the job and the deadline) is what arrives.
    var deadlines: (milliseconds: Int64?, wait: Duration) {
        guard let timeout else { return (nil, AdminClient.noCut) }
        return (timeout.duration.saturatingMilliseconds, timeout.duration + .seconds(5))
    }

    func run() async throws {
        do {
            try await call()
        } catch let error as CLIError where error.code == "routing.timeout" && timeout != nil {
            // The daemon names the time that was left when the job was reached; say which deadline it was.
            throw CLIError("\(error.message) (--timeout \(timeout?.duration.short ?? ""))", code: error.code, showsCode: error.showsCode)
        }
    }

    func call() async throws {
        var argument: Value = .nil
        if let json { argument = try JSONDecoder().decode(Value.self, from: Data(json.utf8)) }
        let (milliseconds, wait) = deadlines
        if best { return try show(try await connection.send(Admin.CallBest(point: job, argument: argument, timeoutMilliseconds: milliseconds), timeout: wait)) }
        if all { return try printJSON(try await connection.send(Admin.CallAll(point: job, argument: argument, timeoutMilliseconds: milliseconds), timeout: wait)) }
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
        let pending = try await channel.startRequest(try Admin.Call(job: job, argument: argument, timeoutMilliseconds: milliseconds).wireBody(), timeout: wait)
        if let upload {
            try await copyStandardInput(to: upload)
        }
        let result: Value
        do {
            result = try await pending.reply()
        } catch let error as ChanError where error.code == .remote {
            throw CLIError(remote: error)
        } catch let error as ChanError where error.code == .timeout {
            throw CLIError("no answer from plugboardd within \(wait.short): \(error.reason)", code: "cli.timeout")
        }
        if case .channel(.byteStreamReader(let reader)) = result {
            return try await copy(reader, to: 1)
        }
        try show(result)
    }

    func show(_ result: Value) throws {
        if format == .text, let s = result.stringValue { return print(s) }
        try printJSON(result)
    }
}

/// A registry listing: one admin request, printed as a table, JSON or names.
protocol RegistryListing: AsyncParsableCommand {
    associatedtype Listing: AdminRequest where Listing.Reply: Sequence, Listing.Reply.Element: Encodable
    var connection: Connection { get }
    var listing: ListingOptions { get }
    static var request: Listing { get }
    static var header: [String] { get }
    static func row(_ row: Listing.Reply.Element) -> [String]
    /// What `-q` prints for a row.
    static func name(_ row: Listing.Reply.Element) -> String
}

extension RegistryListing {
    func run() async throws {
        let rows = Array(try await connection.send(Self.request))
        try listing.print(rows, header: Self.header, name: Self.name, row: Self.row)
    }
}

struct Endpoints: RegistryListing {
    static let configuration = CommandConfiguration(
        abstract: "List the jobs and who serves them.",
        discussion: "-q prints each job and extension point once."
    )
    @OptionGroup var connection: Connection
    @OptionGroup var listing: ListingOptions
    static var request: Admin.Endpoints { Admin.Endpoints() }
    static let header = ["NAME", "KIND", "OWNER", "RANK", "PRIORITY", "STATE"]
    static func row(_ r: Admin.EndpointRow) -> [String] {
        [r.job, r.kind, r.owner, r.rank.map { "\($0)" } ?? "-", r.priority.map { "\($0)" } ?? "-", r.restarting ? "waiting for owner" : "active"]
    }
    static func name(_ r: Admin.EndpointRow) -> String { r.job }
}

struct HooksList: RegistryListing {
    static let configuration = CommandConfiguration(
        commandName: "hooks", abstract: "List the hooks, in the order they run.",
        discussion: "-q prints each hook event once."
    )
    @OptionGroup var connection: Connection
    @OptionGroup var listing: ListingOptions
    static var request: Admin.Hooks { Admin.Hooks() }
    static let header = ["EVENT", "PHASE", "PLUGIN", "PRIORITY", "POLICY", "TIMEOUT"]
    static func row(_ r: Admin.HookRow) -> [String] { [r.event, r.phase, r.owner, "\(r.priority)", r.policy, r.timeout] }
    static func name(_ r: Admin.HookRow) -> String { r.event }
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
    @Option(help: "table, or json (errors too, on stderr).") var format: ListFormat = .table

    func validate() throws {
        if let json, (try? JSONDecoder().decode(Value.self, from: Data(json.utf8))) == nil {
            throw ValidationError("the body is not valid JSON: \(json)")
        }
    }

    func run() async throws {
        var body: Value = .nil
        if let json { body = try JSONDecoder().decode(Value.self, from: Data(json.utf8)) }
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
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List the pipeline registrations, in routing order (the default).",
        discussion: "-q prints each message type once."
    )
    @OptionGroup var connection: Connection
    @OptionGroup var listing: ListingOptions
    static var request: Admin.Pipeline { Admin.Pipeline() }
    static let header = ["TYPE", "PLUGIN", "PRIORITY"]
    static func row(_ r: Admin.PipelineRow) -> [String] { [r.type, r.owner, "\(r.priority)"] }
    static func name(_ r: Admin.PipelineRow) -> String { r.type }
}

/// `--since`: a sequence number (a bare whole number) or how long ago (`10m`).
enum EventsSince: ExpressibleByArgument {
    case sequence(UInt64)
    case ago(Duration)

    init?(argument: String) {
        if let seq = UInt64(argument) {
            self = .sequence(seq)
        } else if let span = TimeSpan(argument: argument) {
            self = .ago(span.duration)
        } else {
            return nil
        }
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow the daemon's events as they happen, like `docker events`.",
        discussion: """
            Types: plugin.STATE (starting, active, restarting, failed, disabled, stopped), plugin.added,
            plugin.add-failed, plugin.removed, plugin.granted, plugin.set (the operator's changes),
            registration.added, registration.withdrawn, hook.outcome, container.started, container.exited,
            container.removed, and whatever plugins publish (events.publish). A reader that falls behind gets an
            events.lost record with the count. The daemon keeps its last 1000 events: --since replays those
            first, then follows. Examples:
              plugboard events --type 'plugin.*' --filter plugin=audit
              plugboard events --type container.exited --format json
              plugboard events --since 10m          # what happened in the last ten minutes, then follow
              plugboard events --since 4211         # everything after the event with seq 4211
            """
    )
    @OptionGroup var connection: Connection
    @Option(help: ArgumentHelp("Only events of this type; a trailing * matches a prefix (repeatable).", valueName: "type")) var type: [String] = []
    @Option(help: ArgumentHelp("Only events whose attribute KEY equals VALUE (repeatable).", valueName: "key=value")) var filter: [String] = []
    @Option(help: ArgumentHelp("Replay the kept events (the last 1000) from this long ago (10m, 30s), or those after this seq (a whole number), before following.", valueName: "duration|seq")) var since: EventsSince?
    @Option(help: "table, or json (one object per line; errors too, on stderr).") var format: ListFormat = .table

    func validate() throws {
        for f in filter where f.split(separator: "=", maxSplits: 1).count != 2 {
            throw ValidationError("--filter takes KEY=VALUE, not \(f)")
        }
    }

    func run() async throws {
        var attributes: [String: String] = [:]
        for f in filter {
            let kv = f.split(separator: "=", maxSplits: 1).map(String.init)
            attributes[kv[0]] = kv[1]
        }
        var sinceSequence: UInt64?
        var sinceMilliseconds: Int64?
        switch since {
        case .sequence(let seq)?: sinceSequence = seq
        case .ago(let duration)?: sinceMilliseconds = duration.saturatingMilliseconds
        case nil: break
        }
        let (session, channel) = try await connection.open()
        defer { session.close(reason: "done") }
        let (sink, events) = try session.makePipe()
        let request = Admin.Events(sink: sink, types: type, attributes: attributes, sinceSequence: sinceSequence, sinceMilliseconds: sinceMilliseconds)
        do {
            _ = try await channel.request(try request.wireBody(), timeout: .seconds(30))
        } catch let error as ChanError where error.code == .remote {
            throw CLIError(remote: error)
        }
        // The daemon subscribed before answering: from here on no event is missed.
        writeToStandardError("plugboard: following events at \(connection.path) (Ctrl-C to stop)\n")
        for try await event in events {
            if format == .json {
                print(try CLIOutput.json(event, pretty: false))
            } else {
                let rest = (event.mapValue ?? []).compactMap { e -> String? in
                    guard let k = e.key.stringValue, !["seq", "time", "type"].contains(k) else { return nil }
                    return "\(k)=\(e.value.stringValue ?? compactJSON(e.value))"
                }
                let seq = event["seq"].map { " seq=\(text($0))" } ?? ""
                print("\(text(event["time"])) \(text(event["type"])) \(rest.joined(separator: " "))\(seq)")
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
    @Option(help: "text (the Prometheus format), or json (that text as one JSON string; errors too, on stderr).") var format: OutputFormat = .text

    func run() async throws {
        let text = try await connection.send(Admin.Call(job: "metrics.scrape")).stringValue ?? ""
        if format == .json { return try printJSON(text) }
        print(text, terminator: "")
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
