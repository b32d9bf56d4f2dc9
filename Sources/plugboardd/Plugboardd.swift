#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import ArgumentParser
import Chan
import Containers
import Engine
import Foundation
import Logging
import Metrics
import PluginKit
import Routing
import Prometheus
import ServiceLifecycle
import Services

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
            """,
        version: "plugboardd \(PlugboardVersion.release) (protocol \(PlugboardVersion.protocolVersion))"
    )

    @Option(name: .customLong("plugin"), help: ArgumentHelp("A built-in plugin: NAME, NAME OPTION or NAME=OPTION.", valueName: "name"))
    var plugins: [String] = []

    @Option(name: .customLong("plugin-exec"), help: ArgumentHelp("A subprocess plugin: \"[NAME=]COMMAND [ARGS...]\", or a bare NAME: plugboard-plugin-NAME found on $PLUGBOARD_PLUGIN_PATH, $PATH, ../libexec/plugboard/plugins, the binary's directory, /usr/libexec/plugboard/plugins.", valueName: "command"))
    var execPlugins: [String] = []

    @Option(name: .customLong("plugin-container"), help: ArgumentHelp("A container plugin: \"NAME=BUNDLE\", a directory with rootfs/ and plugin.json, run by runc.", valueName: "name=bundle"))
    var containerPlugins: [String] = []

    @Option(name: .customLong("plugin-listen"), help: ArgumentHelp("Where plugins that plugboardd does not start connect in: unix:/PATH (peers known by their uid/gid) or tcp://HOST:PORT (mutual TLS: --tls-cert, --tls-key, --tls-ca). Repeatable. See docs/REMOTE.md.", valueName: "endpoint"))
    var pluginListen: [String] = []

    @Option(name: .customLong("plugin-remote"), help: ArgumentHelp("A remote plugin and who may connect as it: \"NAME [uid=U,...] [gid=G,...] [cn=NAME,...]\" (uid/gid on a unix socket; on TCP the client certificate's CN, by default NAME).", valueName: "allow-list"))
    var remotePlugins: [String] = []

    @Option(name: .customLong("tls-cert"), help: ArgumentHelp("The daemon's certificate (PEM) for TCP listeners (--plugin-listen tcp://, --admin-listen).", valueName: "file"))
    var tlsCert: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("The private key (PEM) of --tls-cert.", valueName: "file"))
    var tlsKey: String?

    @Option(name: .customLong("tls-ca"), help: ArgumentHelp("The CA bundle (PEM) client certificates must chain to.", valueName: "file"))
    var tlsCA: String?

    @Option(name: .customLong("admin-listen"), help: ArgumentHelp("Also serve the admin socket's requests at tcp://HOST:PORT, with mutual TLS; clients are served when their certificate's CN is given with --admin-client.", valueName: "endpoint"))
    var adminListen: [String] = []

    @Option(name: .customLong("admin-client"), help: ArgumentHelp("A certificate common name served on --admin-listen (repeatable).", valueName: "cn"))
    var adminClients: [String] = []

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

    @Option(help: ArgumentHelp("A configuration file (TOML): the daemon's settings and its plugins; flags override it. Default: \(DaemonConfig.defaultPath) when it exists. See docs/CONFIG.md.", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("Check a configuration file and exit: 0 when it is good, else the errors with file, line and key. Starts nothing.", valueName: "file"))
    var checkConfig: String?

    @Option(help: "Log format: text or json (default text).")
    var logFormat: LogFormat?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: Logger.Level?

    @Option(help: "Seconds shutdown waits at each step (in-flight calls, then GOAWAY, then SIGTERM) (default 5).")
    var shutdownGrace: Double?

    @Option(help: ArgumentHelp("A signature policy for plugin images (containers-policy.json(5), as skopeo reads it): pulls it refuses are refused. Without it, images are checked by digest only. See docs/DISTRIBUTION.md.", valueName: "file"))
    var imagePolicy: String?

    @Option(help: ArgumentHelp("Where skopeo finds plugin images' signatures (a registries.d(5) directory: sigstore lookaside stores per registry); default /etc/containers/registries.d.", valueName: "dir"))
    var imageRegistriesD: String?

    func run() async throws {
        if let checkConfig {
            do {
                let config = try DaemonConfig.load(checkConfig, builtinNames: builtinNames + serviceNames)
                print("\(checkConfig): good: \(config.plugins.count) plugins (\(config.plugins.map(\.name).joined(separator: ", ")))")
                return
            } catch let error as ConfigError {
                throw ValidationError("\(error)")
            }
        }
        // The file, when there is one; then every flag given wins over it.
        let file = config ?? (FileManager.default.fileExists(atPath: DaemonConfig.defaultPath) ? DaemonConfig.defaultPath : nil)
        var resolved = self
        var configured: DaemonConfig?
        if let file {
            do {
                let loaded = try DaemonConfig.load(file, builtinNames: builtinNames + serviceNames)
                resolved.stateDir = stateDir ?? loaded.stateDir
                resolved.adminSocket = adminSocket ?? loaded.adminSocket
                resolved.adminGroup = adminGroup ?? loaded.adminGroup
                resolved.metricsListen = metricsListen ?? loaded.metricsListen
                resolved.logFormat = logFormat ?? loaded.logFormat.flatMap { LogFormat(rawValue: $0) }
                resolved.logLevel = logLevel ?? loaded.logLevel.flatMap { Logger.Level(rawValue: $0) }
                resolved.shutdownGrace = shutdownGrace ?? loaded.shutdownGrace
                resolved.grantAllPermissions = grantAllPermissions || (loaded.grantAllPermissions ?? false)
                resolved.mergeRemote(loaded)
                configured = loaded
            } catch let error as ConfigError {
                throw ValidationError("\(error)")
            }
        }
        try await resolved.serve(configFile: file, configured: configured)
    }

    /// Runs the daemon with every setting resolved (flags over the file).
    private func serve(configFile: String?, configured: DaemonConfig?) async throws {
        let shutdownGrace = self.shutdownGrace ?? 5
        let logger = bootstrapLogging()
        // Libraries record through swift-metrics; the daemon backs it with Prometheus.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let stateDirectory = stateDir ?? Plugboardd.defaultStateDirectory()
        let socketPath = adminSocket ?? AdminSocket.defaultPath()
        // The state directory is ours alone before anything in it is touched: a second daemon
        // would otherwise take the first one's containers for leftovers and delete them.
        let lock: StateDirectoryLock
        do {
            lock = try StateDirectoryLock(directory: stateDirectory, adminSocket: socketPath)
        } catch let error as EngineError {
            throw ValidationError(error.reason)
        }
        // Containers need runc; without it the daemon runs and says so when one is asked for.
        var runtime: ContainerRuntime?
        var noRuntime = ""
        do {
            runtime = try ContainerRuntime(stateDirectory: stateDirectory, shim: Engine.defaultShimPath())
        } catch {
            noRuntime = "\(error)"
        }
        // A cgroup per exec plugin under plugboard/INSTANCE (named after the state directory).
        let containment = PluginContainment(stateDirectory: stateDirectory, logger: logger)
        logger.info("plugin containment: \(containment.summary)")
        let engine = Engine(logger: logger, containers: runtime, containment: containment)
        if let imagePolicy {
            let path = URL(fileURLWithPath: imagePolicy).standardizedFileURL.path
            guard FileManager.default.isReadableFile(atPath: path) else { throw ValidationError("--image-policy \(imagePolicy): cannot read the file") }
            engine.imagePolicy.withLockedValue { $0 = path }
        }
        if let imageRegistriesD {
            let path = URL(fileURLWithPath: imageRegistriesD).standardizedFileURL.path
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("--image-registries-d \(imageRegistriesD): not a directory")
            }
            engine.imageRegistriesD.withLockedValue { $0 = path }
        }
        let builtins = makeBuiltins(engine: engine, logger: logger)
        let metrics = MetricsPlugin(registry: registry, engine: engine)
        let metricsAddress = try metricsListen.map(Self.parseHostPort)
        // The command line's plugins, the file's, and what operators changed at run time
        // (STATE/plugins.json), which is recorded from now on.
        let store = PluginStore(stateDirectory: stateDirectory, logger: logger)
        let pluginConfiguration = PluginConfiguration(
            commandLine: try makeSpecs(builtins: builtins, noRuntime: noRuntime), file: configFile, builtins: builtins, store: store, logger: logger
        )
        let specs: [PluginSpec]
        do {
            specs = try makeServices(engine: engine, stateDirectory: stateDirectory, metrics: metrics) + (try await pluginConfiguration.initialSpecs(configured))
        } catch let error as EngineError {
            throw ValidationError(error.reason)
        }
        engine.setChangeRecorder { change in await store.record(change) }
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
        // Three services in one group: each starts once what it needs is up, and graceful
        // shutdown runs in reverse (the admin socket closes, then metrics, then the plugins).
        let booted = ReadinessSignal()
        let metricsServing = ReadinessSignal()
        let remote = try remoteSettings()
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: EngineService(engine: engine, specs: specs, booted: booted, grace: .clampedSeconds(shutdownGrace), logger: logger), failureTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if let metricsAddress {
            services.append(.init(
                service: MetricsHTTPService(address: metricsAddress, scrape: metrics.scrape, after: booted, serving: metricsServing, logger: logger),
                failureTerminationBehavior: .gracefullyShutdownGroup
            ))
        } else {
            metricsServing.fire()
        }
        // Remote plugins' and admin clients' listeners, bound before plugboardd says it is ready.
        var remoteListening: [ReadinessSignal] = []
        if !remote.pluginListen.isEmpty {
            let listening = ReadinessSignal()
            remoteListening.append(listening)
            services.append(.init(service: PluginListenService(engine: engine, settings: remote, after: booted, listening: listening, logger: logger), failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        if !remote.adminListen.isEmpty {
            let listening = ReadinessSignal()
            remoteListening.append(listening)
            services.append(.init(service: AdminListenService(
                engine: engine, settings: remote, builtins: builtins, after: booted, listening: listening, logger: logger
            ), failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        services.append(.init(service: ReloadService(configuration: pluginConfiguration, engine: engine, after: booted), failureTerminationBehavior: .gracefullyShutdownGroup))
        services.append(.init(service: AdminService(
            engine: engine, path: socketPath, adminGroup: groupID, builtins: builtins, after: [booted, metricsServing] + remoteListening, logger: logger
        ), failureTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        withExtendedLifetime(lock) {}
    }

    /// Logging for the whole process: text or JSON lines on stderr, at `--log-level`.
    private func bootstrapLogging() -> Logger {
        let level = logLevel ?? .info
        let format = logFormat ?? .text
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
        return Logger(label: "plugboardd")
    }

    /// "HOST:PORT" for `--metrics-listen`.
    static func parseHostPort(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--metrics-listen takes HOST:PORT, for example 127.0.0.1:9464, not \(text)")
        }
        return (String(text[..<colon]), port)
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
            var spec = PluginSpec(name: name, kind: .builtin(plugin), options: option)
            spec.builtinName = name
            specs.append(spec)
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
        for entry in remotePlugins {
            specs.append(try Self.parseRemote(entry))
        }
        return specs
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
