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

struct Endpoints: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the jobs and who serves them.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table

    func run() async throws {
        let rows = try await connection.request(.fields(("command", "endpoints")))
        if format == .json { return try printJSON(rows) }
        printTable(["JOB", "OWNER", "STATE"], (rows.arrayValue ?? []).map { [text($0["job"]), text($0["owner"]), $0["restarting"] == true ? "waiting for owner" : "active"] })
    }
}

struct HooksList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "hooks", abstract: "List the hooks, in the order they run.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table

    func run() async throws {
        let rows = try await connection.request(.fields(("command", "hooks")))
        if format == .json { return try printJSON(rows) }
        printTable(["EVENT", "PHASE", "PLUGIN", "PRIORITY", "POLICY", "TIMEOUT"], (rows.arrayValue ?? []).map {
            [text($0["event"]), text($0["phase"]), text($0["owner"]), text($0["priority"]), text($0["policy"]), text($0["timeout"])]
        })
    }
}

struct PipelineList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pipeline", abstract: "List the pipeline registrations, in routing order.")
    @OptionGroup var connection: Connection
    @Option(help: "table or json.") var format: OutputFormat = .table

    func run() async throws {
        let rows = try await connection.request(.fields(("command", "pipeline")))
        if format == .json { return try printJSON(rows) }
        printTable(["TYPE", "PLUGIN", "PRIORITY"], (rows.arrayValue ?? []).map { [text($0["type"]), text($0["owner"]), text($0["priority"])] })
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow the daemon's events as they happen, like `docker events`.",
        discussion: "Example: plugboard events --filter plugin=audit --format json"
    )
    @OptionGroup var connection: Connection
    @Option(help: ArgumentHelp("Only events whose KEY equals VALUE (repeatable).", valueName: "key=value")) var filter: [String] = []
    @Option(help: "table or json (one object per line).") var format: OutputFormat = .table

    func run() async throws {
        let filters = filter.map { $0.split(separator: "=", maxSplits: 1).map(String.init) }
        let (session, channel) = try await connection.open()
        defer { session.close(reason: "done") }
        let (sink, events) = try session.makePipe()
        _ = try await channel.request(.fields(("command", "events"), ("sink", .channel(.sender(sink)))))
        for try await event in events {
            guard filters.allSatisfy({ $0.count == 2 && text(event[$0[0]]) == $0[1] }) else { continue }
            if format == .json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(event), as: UTF8.self))
            } else {
                print("\(text(event["time"])) \(text(event["type"])) \(text(event["plugin"])) \(text(event["state"])) restarts=\(text(event["restarts"])) \(text(event["detail"]))")
            }
            fflush(nil)
        }
    }
}
