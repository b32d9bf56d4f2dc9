#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Containers
import ContainersPlugin
import EchoPlugin
import EventsPlugin
import Metrics
import MetricsPlugin
import Prometheus
import StatePlugin
import Engine
import Foundation
import HostMountPlugin
import Logging
import PluginKit
import ServiceLifecycle

/// The built-in plugins, by name. `containers` needs the engine's hooks and runc.
func makeBuiltins(engine: Engine, logger: Logger) -> [String: any Plugin] {
    var builtins: [String: any Plugin] = [
        "echo": EchoPlugin(),
        "host-mount": HostMountPlugin(),
    ]
    if let runtime = engine.containers {
        builtins["containers"] = ContainersPlugin(runc: runtime.runc, bundles: runtime.bundles + "/containers", hooks: engine.hooks, logger: logger)
    }
    return builtins
}

/// Every built-in's name, whether or not it can run here.
let builtinNames = ["containers", "echo", "host-mount"]

/// The services every plugboardd runs, before any other plugin: events, state, metrics.
func makeServices(engine: Engine, stateDirectory: String, metrics: MetricsPlugin) throws -> [PluginSpec] {
    let store: StateStore
    do {
        store = try StateStore(path: stateDirectory + "/state.sqlite")
    } catch {
        throw ValidationError("cannot open the state store \(stateDirectory)/state.sqlite: \(error)")
    }
    return [
        PluginSpec(name: "events", kind: .builtin(EventsPlugin(bus: engine.bus)), openToAll: true),
        PluginSpec(name: "state", kind: .builtin(StatePlugin(store: store) { caller, grant in await engine.isGranted(caller, grant) }), openToAll: true),
        PluginSpec(name: "metrics", kind: .builtin(metrics), openToAll: true),
    ]
}
let serviceNames = ["events", "state", "metrics"]

struct Plugboardd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboardd",
        abstract: "The Plugboard daemon: hosts the hub, the pipeline and the hooks, and keeps plugins alive.",
        discussion: """
            Built-in plugins run in process; exec plugins run as children speaking the Plugboard protocol on fds 3 and 4 (see docs/PROTOCOL.md). Both are supervised: restarted on failure with backoff, marked failed after a crash loop, and stopped in reverse boot order on SIGTERM or SIGINT.

            Examples:
              plugboardd --plugin echo
              plugboardd --plugin host-mount "/data /var/data"
              plugboardd --plugin-exec "audit=/usr/local/bin/audit-plugin --verbose"
              plugboardd --plugin containers --plugin-container "label=/opt/plugboard/label-bundle"
            """
    )

    @Option(name: .customLong("plugin"), help: ArgumentHelp("A built-in plugin: NAME, NAME OPTION or NAME=OPTION.", valueName: "name"))
    var plugins: [String] = []

    @Option(name: .customLong("plugin-exec"), help: ArgumentHelp("A subprocess plugin: \"[NAME=]COMMAND [ARGS...]\".", valueName: "command"))
    var execPlugins: [String] = []

    @Option(name: .customLong("plugin-container"), help: ArgumentHelp("A container plugin: \"NAME=BUNDLE\", a directory with rootfs/ and plugin.json, run by runc.", valueName: "name=bundle"))
    var containerPlugins: [String] = []

    @Flag(help: "Grant container plugins on the command line every privilege their manifests ask for (host network, host mounts, capabilities, devices).")
    var grantAllPermissions = false

    @Option(help: ArgumentHelp("Where state is kept (default /var/lib/plugboard for root, else $XDG_STATE_HOME/plugboard).", valueName: "dir"))
    var stateDir: String?

    @Option(help: ArgumentHelp("The admin socket (default /run/plugboard/admin.sock for root, else $XDG_RUNTIME_DIR/plugboard/admin.sock).", valueName: "path"))
    var adminSocket: String?

    @Option(help: ArgumentHelp("A group whose members may also use the admin socket.", valueName: "group"))
    var adminGroup: String?

    @Option(help: ArgumentHelp("Also serve the metrics over HTTP at http://HOST:PORT/metrics (PORT 0 picks one; the log says which).", valueName: "host:port"))
    var metricsListen: String?

    @Option(help: "Log format: text or json.")
    var logFormat: LogFormat = .text

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(help: "Seconds shutdown waits at each step (in-flight calls, then GOAWAY, then SIGTERM).")
    var shutdownGrace: Double = 5

    func run() async throws {
        let level = logLevel
        let format = logFormat
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                return JSONLogHandler(label: label, level: level)
            }
        }
        let logger = Logger(label: "plugboardd")
        // Libraries record through swift-metrics; the daemon backs it with Prometheus.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let stateDirectory = stateDir ?? Plugboardd.defaultStateDirectory()
        // Containers need runc; without it the daemon runs and says so when one is asked for.
        var runtime: ContainerRuntime?
        var noRuntime = ""
        do {
            runtime = try ContainerRuntime(stateDirectory: stateDirectory, shim: Engine.defaultShimPath())
        } catch {
            noRuntime = "\(error)"
        }
        let engine = Engine(logger: logger, containers: runtime)
        let builtins = makeBuiltins(engine: engine, logger: logger)
        let metrics = MetricsPlugin(registry: registry, engine: engine)
        var metricsAddress: (host: String, port: Int)?
        if let metricsListen {
            guard let colon = metricsListen.lastIndex(of: ":"), let port = Int(metricsListen[metricsListen.index(after: colon)...]), (0...65535).contains(port) else {
                throw ValidationError("--metrics-listen takes HOST:PORT, for example 127.0.0.1:9464, not \(metricsListen)")
            }
            metricsAddress = (String(metricsListen[..<colon]), port)
        }
        let specs = try makeServices(engine: engine, stateDirectory: stateDirectory, metrics: metrics) + makeSpecs(builtins: builtins, noRuntime: noRuntime)
        let socketPath = adminSocket ?? AdminServer.defaultPath()
        var groupID: gid_t?
        if let adminGroup {
            guard let group = getgrnam(adminGroup) else { throw ValidationError("no group named \(adminGroup)") }
            groupID = group.pointee.gr_gid
        }
        logger.info("starting", metadata: [
            "plugboard.plugins": "\(specs.count)", "plugboard.state_dir": "\(stateDirectory)", "plugboard.admin_socket": "\(socketPath)",
        ])
        // Refuse early, before starting any plugin, when another daemon serves the socket.
        try AdminServer.prepareForDaemon(path: socketPath)
        let service = EngineService(
            engine: engine, specs: specs, builtins: builtins, metrics: metrics, metricsAddress: metricsAddress, grace: .milliseconds(Int64(shutdownGrace * 1000)),
            socketPath: socketPath, adminGroup: groupID, logger: logger
        )
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: service)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        ))
        try await group.run()
    }

    func makeSpecs(builtins: [String: any Plugin], noRuntime: String) throws -> [PluginSpec] {
        var specs: [PluginSpec] = []
        for entry in plugins {
            let (name, option) = Plugboardd.splitNameAndOption(entry)
            guard let plugin = builtins[name] else {
                if serviceNames.contains(name) { throw ValidationError("\(name) is a service plugboardd always runs: no --plugin needed") }
                if builtinNames.contains(name) { throw ValidationError("built-in plugin \"\(name)\" cannot run here: \(noRuntime)") }
                throw ValidationError("unknown built-in plugin \"\(name)\"; the built-ins are: \(builtinNames.joined(separator: ", "))")
            }
            specs.append(PluginSpec(name: name, kind: .builtin(plugin), options: option))
        }
        for entry in execPlugins {
            let (name, words) = try Plugboardd.parseExec(entry)
            guard let command = words.first else { throw ValidationError("--plugin-exec \"\(entry)\" names no command") }
            specs.append(PluginSpec(name: name, kind: .exec(command: command, arguments: Array(words.dropFirst()))))
        }
        for entry in containerPlugins {
            let (name, bundle) = Plugboardd.splitNameAndOption(entry)
            guard !bundle.isEmpty, !name.isEmpty else { throw ValidationError("--plugin-container takes \"NAME=BUNDLE\", not \"\(entry)\"") }
            guard noRuntime.isEmpty else { throw ValidationError("container plugin \(name) cannot run here: \(noRuntime)") }
            let absolute = URL(fileURLWithPath: bundle).standardizedFileURL.path
            specs.append(PluginSpec(name: name, kind: .container(bundle: absolute), grantAllPrivileges: grantAllPermissions))
        }
        return specs
    }

    /// "NAME=OPTION" → (NAME, OPTION); "NAME" → (NAME, "").
    static func splitNameAndOption(_ entry: String) -> (String, String) {
        guard let eq = entry.firstIndex(of: "=") else { return (entry, "") }
        return (String(entry[..<eq]), String(entry[entry.index(after: eq)...]))
    }

    /// "[NAME=]COMMAND ARGS..." with shell-like quoting → (NAME?, [COMMAND, ARGS...]).
    static func parseExec(_ entry: String) throws -> (String?, [String]) {
        var name: String?
        var rest = Substring(entry)
        if let eq = rest.firstIndex(of: "="), !rest[..<eq].contains(" "), !rest[..<eq].contains("/") {
            name = String(rest[..<eq])
            rest = rest[rest.index(after: eq)...]
        }
        return (name, try splitWords(String(rest)))
    }

    static func splitWords(_ text: String) throws -> [String] {
        var words: [String] = []
        var current = ""
        var quote: Character?
        var inWord = false
        for c in text {
            if let q = quote {
                if c == q { quote = nil } else { current.append(c) }
            } else if c == "\"" || c == "'" {
                quote = c
                inWord = true
            } else if c == " " || c == "\t" {
                if inWord { words.append(current); current = ""; inWord = false }
            } else {
                current.append(c)
                inWord = true
            }
        }
        if quote != nil { throw ValidationError("unbalanced quote in \"\(text)\"") }
        if inWord { words.append(current) }
        return words
    }

    static func defaultStateDirectory() -> String {
        if getuid() == 0 { return "/var/lib/plugboard" }
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_STATE_HOME"] ?? ((env["HOME"] ?? "/tmp") + "/.local/state")
        return base + "/plugboard"
    }
}

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Boots the engine, runs until graceful shutdown, then stops the plugins in reverse order.
struct EngineService: Service {
    let engine: Engine
    let specs: [PluginSpec]
    let builtins: [String: any Plugin]
    let metrics: MetricsPlugin
    let metricsAddress: (host: String, port: Int)?
    let grace: Duration
    let socketPath: String
    let adminGroup: gid_t?
    let logger: Logger

    func run() async throws {
        try await engine.boot(specs)
        let admin = try await AdminServer.start(path: socketPath, engine: engine, adminGroup: adminGroup, builtins: { [builtins] in builtins[$0] }, logger: logger)
        defer { Task { await admin.close() } }
        var http: MetricsHTTPServer?
        if let metricsAddress {
            do {
                http = try await MetricsHTTPServer.start(host: metricsAddress.host, port: metricsAddress.port, scrape: metrics.scrape, logger: logger)
            } catch {
                await engine.shutdown(grace: grace)
                throw ValidationError("cannot serve metrics on \(metricsAddress.host):\(metricsAddress.port): \(error)")
            }
            logger.info("metrics listening", metadata: ["metrics.url": "http://\(metricsAddress.host):\(http?.port ?? 0)/metrics"])
        }
        logger.info("plugboardd ready", metadata: ["plugboard.boot_order": "\(engine.bootOrder)", "plugboard.admin_socket": "\(admin.path)"])
        try? await gracefulShutdown()
        await admin.close()
        await http?.close()
        logger.info("shutting down", metadata: ["plugboard.order": "\(Array(engine.bootOrder.reversed()))"])
        await engine.shutdown(grace: grace)
        logger.info("stopped")
    }
}

/// `--plugin NAME OPTION` is rewritten to `--plugin NAME=OPTION` before parsing, so both
/// spellings of the design's example work.
func rewritePluginArguments(_ arguments: [String]) -> [String] {
    var out: [String] = []
    var i = 0
    while i < arguments.count {
        let a = arguments[i]
        if a == "--plugin", i + 2 < arguments.count, !arguments[i + 1].contains("="), !arguments[i + 2].hasPrefix("-") {
            out.append(a)
            out.append(arguments[i + 1] + "=" + arguments[i + 2])
            i += 3
            continue
        }
        out.append(a)
        i += 1
    }
    return out
}

@main
enum Main {
    static func main() async {
        let arguments = rewritePluginArguments(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try Plugboardd.parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            Plugboardd.exit(withError: error)
        }
    }
}
