#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Foundation

struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call a job with a JSON argument and print the reply as JSON.",
        discussion: "Example: plugboard call echo '{\"hello\": \"world\"}'"
    )
    @OptionGroup var connection: Connection
    @Argument(help: "The job.") var job: String
    @Argument(help: "The argument, as JSON (default null).") var json: String?

    func run() async throws {
        var argument: Value = .nil
        if let json {
            do {
                argument = try JSONDecoder().decode(Value.self, from: Data(json.utf8))
            } catch {
                throw ValidationError("the argument is not valid JSON: \(json)")
            }
        }
        try printJSON(try await connection.request(.fields(("command", "call"), ("job", .string(job)), ("argument", argument))))
    }
}

/// A registry listing: one admin command, printed as a table or JSON.
protocol RegistryListing: AsyncParsableCommand {
    var connection: Connection { get }
    var format: OutputFormat { get }
    static var command: String { get }
    static var header: [String] { get }
    static func row(_ v: Value) -> [String]
}

extension RegistryListing {
    func run() async throws {
        let rows = try await connection.request(.fields(("command", .string(Self.command))))
        if format == .json { return try printJSON(rows) }
        printTable(Self.header, (rows.arrayValue ?? []).map(Self.row))
    }
}

struct Endpoints: RegistryListing {
    static let configuration = CommandConfiguration(abstract: "List the jobs and who serves them.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table
    static let command = "endpoints"
    static let header = ["JOB", "OWNER", "STATE"]
    static func row(_ v: Value) -> [String] { [text(v["job"]), text(v["owner"]), v["restarting"] == true ? "waiting for owner" : "active"] }
}

struct HooksList: RegistryListing {
    static let configuration = CommandConfiguration(commandName: "hooks", abstract: "List the hooks, in the order they run.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table
    static let command = "hooks"
    static let header = ["EVENT", "PHASE", "PLUGIN", "PRIORITY", "POLICY", "TIMEOUT"]
    static func row(_ v: Value) -> [String] { [text(v["event"]), text(v["phase"]), text(v["owner"]), text(v["priority"]), text(v["policy"]), text(v["timeout"])] }
}

struct PipelineList: RegistryListing {
    static let configuration = CommandConfiguration(commandName: "pipeline", abstract: "List the pipeline registrations, in routing order.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table
    static let command = "pipeline"
    static let header = ["TYPE", "PLUGIN", "PRIORITY"]
    static func row(_ v: Value) -> [String] { [text(v["type"]), text(v["owner"]), text(v["priority"])] }
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
        var attributes: [(key: Value, value: Value)] = []
        for f in filter {
            let kv = f.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { throw ValidationError("--filter takes KEY=VALUE, not \(f)") }
            attributes.append((key: .string(kv[0]), value: .string(kv[1])))
        }
        let (session, channel) = try await connection.open()
        defer { session.close(reason: "done") }
        let (sink, events) = try session.makePipe()
        _ = try await channel.request(.fields(
            ("command", "events"), ("sink", .channel(.sender(sink))),
            ("types", .array(type.map { .string($0) })), ("attributes", .map(attributes))
        ))
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
        let text = try await connection.request(.fields(("command", "call"), ("job", "metrics.scrape"), ("argument", .nil)))
        print(text.stringValue ?? "", terminator: "")
    }
}
