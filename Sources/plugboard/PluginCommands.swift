import AdminProtocol
import ArgumentParser
import Chan
import Foundation

struct PluginGroup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugin",
        abstract: "List, inspect, add, remove, enable, disable, restart and grant plugins; install, create, push and upgrade plugin images; test a plugin executable against the protocol.",
        subcommands: [List.self, Inspect.self, Add.self, Remove.self, Enable.self, Disable.self, Restart.self, Grant.self, Set.self, Install.self, Create.self, Push.self, Upgrade.self, Test.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls", abstract: "List plugins, like `docker plugin ls`.",
            discussion: """
                --available lists instead the plugins that could be started by name (plugboardd --plugin-exec NAME): \
                each plugboard-plugin-NAME executable found on $PLUGBOARD_PLUGIN_PATH, $PATH, ../libexec/plugboard/plugins \
                beside this binary, this binary's directory and /usr/libexec/plugboard/plugins, the first of each name. \
                It asks no daemon: it looks from this shell, as a plugboardd started here from the same bin directory would.
                Examples:
                  plugboard plugin ls --format json
                  plugboard plugin ls -q   # names only
                  plugboard plugin ls --available
                """
        )
        @OptionGroup var connection: Connection
        @OptionGroup var listing: ListingOptions
        @Flag(help: "List the plugins that can be found by name (NAME PATH), not the daemon's.") var available = false

        func run() async throws {
            if available {
                let found = PluginSearchPath.forThisProcess().available()
                if listing.quiet { found.forEach { Swift.print($0.name) }; return }
                if listing.format == .json { return try printJSON(found) }
                return printTable(["NAME", "PATH"], found.map { [$0.name, $0.path] })
            }
            let rows = try await connection.send(Admin.PluginList())
            // IMAGE and DIGEST columns only when a plugin was installed from an image; PEER
            // when a remote plugin is listed (where each is connected from; UPTIME is then
            // how long it has been connected).
            let images = rows.contains { $0.image != nil }
            let remote = rows.contains { $0.kind == "remote" }
            let header = ["NAME", "KIND", "STATE", "PID", "RESTARTS", "UPTIME", "REGISTRATIONS"] + (images ? ["IMAGE", "DIGEST"] : []) + (remote ? ["PEER"] : [])
            try listing.print(rows, header: header, name: \.name) { r in
                [r.name, r.kind, r.state, r.pid.map { "\($0)" } ?? "-", "\(r.restarts)", uptime(r.uptimeSeconds), "\(r.registrations)"]
                    + (images ? [r.image ?? "-", r.digest ?? "-"] : [])
                    + (remote ? [r.peer ?? "-"] : [])
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a plugin: registrations, restart history, permissions, command.",
            discussion: "Examples:\n  plugboard plugin inspect host-mount\n  plugboard plugin inspect host-mount --format state\n  plugboard plugin inspect host-mount --format backoff.initial"
        )
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @OptionGroup var inspect: InspectFormat

        func run() async throws {
            try inspect.print(try await connection.send(Admin.PluginInspect(name: name)))
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a new plugin in the running daemon.",
            discussion: "Examples:\n  plugboard plugin add audit --exec \"/usr/local/bin/audit-plugin --verbose\"\n  plugboard plugin add data --builtin host-mount \"/data /var/data\"\n  plugboard plugin add label --container ./label-bundle\n  plugboard plugin add netmon --container /opt/netmon --grant network=host --grant capability=CAP_NET_ADMIN"
        )
        @OptionGroup var connection: Connection
        @Argument(help: "Its name.") var name: String
        @Option(help: ArgumentHelp("A subprocess: \"COMMAND ARGS\".", valueName: "command")) var exec: String?
        @Option(help: ArgumentHelp("A built-in plugin by name.", valueName: "builtin")) var builtin: String?
        @Argument(help: "The option string for a built-in.") var options: String?
        @Option(help: ArgumentHelp("A container plugin: a bundle directory with rootfs/ and plugin.json, run by runc.", valueName: "bundle"), completion: .directory) var container: String?
        @Flag(help: "Grant every job the plugin asks to call and, for a container plugin, every privilege its manifest asks for.") var grantAllPermissions = false
        @Option(help: ArgumentHelp("Grant one container privilege: network=host, mount=SRC:DST[:ro], capability=CAP_NAME, device=/dev/NAME (repeatable).", valueName: "privilege")) var grant: [String] = []
        @Option(help: ArgumentHelp("Take over the state a removed plugin left (plugin rm keeps it aside); without this a new plugin starts with empty state, whatever its name.", valueName: "removed-name")) var adoptState: String?
        @OptionGroup var output: FormatOption

        func validate() throws {
            guard [exec != nil, builtin != nil, container != nil].filter({ $0 }).count == 1 else { throw ValidationError("give exactly one of --exec, --builtin or --container") }
        }

        func run() async throws {
            let request = Admin.PluginAdd(
                name: name, exec: exec, builtin: builtin, container: container.map { URL(fileURLWithPath: $0).standardizedFileURL.path },
                options: options, grantAllPermissions: grantAllPermissions, privileges: grant.isEmpty ? nil : grant, adoptState: adoptState
            )
            let result = try await connection.send(request)
            try output.print("\(result.name) \(result.state)", json: result)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Stop and remove a plugin (refused while another requires it, unless --force).")
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @Flag(help: "Remove it even if other plugins require it.") var force = false
        @OptionGroup var output: FormatOption
        func run() async throws { try output.acknowledge(name, try await connection.send(Admin.PluginRemove(name: name, force: force))) }
    }

    struct Enable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a disabled, stopped or failed plugin.")
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @OptionGroup var output: FormatOption
        func run() async throws { try output.acknowledge(name, try await connection.send(Admin.PluginEnable(name: name))) }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a plugin and keep it stopped (refused while another requires it, unless --force).")
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @Flag(help: "Disable it even if other plugins require it.") var force = false
        @OptionGroup var output: FormatOption
        func run() async throws { try output.acknowledge(name, try await connection.send(Admin.PluginDisable(name: name, force: force))) }
    }

    struct Restart: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Restart a plugin now; clears a crash loop.")
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @OptionGroup var output: FormatOption
        func run() async throws { try output.acknowledge(name, try await connection.send(Admin.PluginRestart(name: name))) }
    }

    struct Grant: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Let a plugin call these jobs, or give a container plugin these privileges (from its next start).",
            discussion: "Examples:\n  plugboard plugin grant audit state.get state.put\n  plugboard plugin grant netmon network=host capability=CAP_NET_ADMIN && plugboard plugin restart netmon"
        )
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @Argument(help: ArgumentHelp("Jobs, or privileges: network=host, mount=SRC:DST[:ro], capability=CAP_NAME, device=/dev/NAME.", valueName: "job-or-privilege"), completion: DaemonNames.jobs) var jobs: [String]
        @OptionGroup var output: FormatOption
        func run() async throws {
            try output.acknowledge(name, try await connection.send(Admin.PluginGrant(name: name, jobs: jobs)))
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change how a plugin is supervised.",
            discussion: "Keys: memory, pids, cpu, restart-policy (always|on-failure|never), backoff-initial, backoff-max, backoff-reset, start-timeout, crash-loop-restarts, crash-loop-window, priority:EVENT, timeout:EVENT, pipeline-priority:TYPE. Durations: 250ms, 2s, 1m.\nExample: plugboard plugin set audit restart-policy=always priority:container.create=90"
        )
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @Argument(help: ArgumentHelp("Settings to change.", valueName: "key=value")) var settings: [String]
        @OptionGroup var output: FormatOption

        func validate() throws {
            for s in settings where s.split(separator: "=", maxSplits: 1).count != 2 {
                throw ValidationError("settings are KEY=VALUE, got \(s)")
            }
        }

        func run() async throws {
            var pairs: [String: String] = [:]
            for s in settings {
                let kv = s.split(separator: "=", maxSplits: 1).map(String.init)
                pairs[kv[0]] = kv[1]
            }
            try output.acknowledge(name, try await connection.send(Admin.PluginSet(name: name, settings: pairs)))
        }
    }
}

extension FormatOption {
    /// What a plugin command did: `{"name", "result"}` as JSON, the result alone as text.
    struct Acknowledgement: Encodable {
        let name: String
        let result: String
    }

    /// Prints the daemon's `result` ("removed", "enabled", …) for `name`.
    func acknowledge(_ name: String, _ result: String) throws {
        try print(result, json: Acknowledgement(name: name, result: result))
    }
}

/// `inspect --format`: the whole answer as JSON (the default), or one field of it.
struct InspectFormat: ParsableArguments {
    @Option(help: ArgumentHelp(
        "json (everything, the default), or the path of one field to print alone: state, backoff.initial, registrations.jobs.0 ({{.state}} works too). A string prints as is, anything else as JSON.",
        valueName: "json|path"
    ))
    var format: String = "json"

    /// The path `format` names: `a.b.0`, or `{{.a.b.0}}` as a Go template writes it.
    var path: [String] {
        var text = format.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("{{"), text.hasSuffix("}}") { text = String(text.dropFirst(2).dropLast(2)).trimmingCharacters(in: .whitespaces) }
        if text.hasPrefix(".") { text.removeFirst() }
        return text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    }

    func validate() throws {
        if format != "json" && path.contains(where: \.isEmpty) {
            throw ValidationError("--format takes json or a field path such as state or backoff.initial, not \(format)")
        }
    }

    /// Prints `value`, or the field the path names.
    func print(_ value: Value) throws {
        guard format != "json" else { return try CLIOutput.printJSON(value) }
        var here = value
        var walked: [String] = []
        for key in path {
            let next: Value?
            if let index = Int(key), let array = here.arrayValue {
                next = index >= 0 && index < array.count ? array[index] : nil
            } else {
                next = here[key]
            }
            guard let next else {
                let fields = (here.mapValue ?? []).compactMap(\.key.stringValue)
                let at = walked.isEmpty ? "" : " in \(walked.joined(separator: "."))"
                throw CLIError(
                    "no field \(key)\(at); " + (here.arrayValue.map { "it is a list of \($0.count)" } ?? (fields.isEmpty ? "it has none" : "its fields are \(fields.joined(separator: ", "))")),
                    code: "cli.no-such-field"
                )
            }
            here = next
            walked.append(key)
        }
        if let s = here.stringValue { return Swift.print(s) }
        if case .map = here { return try CLIOutput.printJSON(here) }
        if case .array = here { return try CLIOutput.printJSON(here) }
        Swift.print(try CLIOutput.json(here, pretty: false))
    }
}

/// "4s", "12m", "3h", "2d", like `docker ps`.
func uptime(_ seconds: Double?) -> String {
    guard let seconds else { return "-" }
    switch seconds {
    case ..<60: return "\(Int(seconds))s"
    case ..<3600: return "\(Int(seconds / 60))m"
    case ..<86400: return "\(Int(seconds / 3600))h"
    default: return "\(Int(seconds / 86400))d"
    }
}
