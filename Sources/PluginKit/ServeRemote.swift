#if canImport(Glibc)
import Glibc
#endif
import Chan
import Logging
import Remote

extension PluginKit {
    /// The first delay before connecting again, doubled after each failure.
    public static let reconnectInitialDelay: Duration = .milliseconds(100)
    /// The longest delay before connecting again.
    public static let reconnectMaximumDelay: Duration = .seconds(5)

    /// Serves `plugin` from a process plugboardd did not start: connects to the daemon at
    /// `connect` (`unix:/path`, or `tcp://HOST:PORT` with mutual TLS), says HELLO with its
    /// declaration — the wire is the one of fds 3/4 — and answers calls. When the
    /// connection ends or cannot be made it connects again, after 0.1 s doubling up to 5 s
    /// (reset once connected), and declares itself again. It never returns: stop it with a
    /// signal.
    ///
    /// The name it claims is `PLUGBOARD_PLUGIN_NAME`, else the name it declares; the daemon
    /// lets it in only when its peer credentials (unix) or its certificate (TCP) are on
    /// that plugin's allow-list, and otherwise says why, which is logged here as an error.
    /// - Parameters:
    ///   - tls: the certificate, key and CA bundle; by default from `PLUGBOARD_TLS_CERT`,
    ///     `PLUGBOARD_TLS_KEY` and `PLUGBOARD_TLS_CA`. Needed for TCP.
    public static func serve(_ plugin: some Plugin, connect: String, tls: TLSFiles? = nil, logger: Logger = Logger(label: "plugin")) async -> Never {
        let environment = currentEnvironment()
        let endpoint: RemoteEndpoint
        let files: TLSFiles?
        do {
            endpoint = try RemoteEndpoint(parsing: connect)
            files = try tls ?? TLSFiles.fromEnvironment(environment)
        } catch {
            writeStandardError("plugboard plugin: \(error)\n")
            exit(2)
        }
        if case .tcp = endpoint, files == nil {
            writeStandardError("plugboard plugin: \(endpoint) needs TLS: set PLUGBOARD_TLS_CERT, PLUGBOARD_TLS_KEY and PLUGBOARD_TLS_CA (PEM files)\n")
            exit(2)
        }
        let executableName = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? "plugin"
        let options = environment["PLUGBOARD_OPTIONS"].flatMap { $0.isEmpty ? nil : $0 } ?? CommandLine.arguments.dropFirst().joined(separator: " ")
        var delay = reconnectInitialDelay
        var connections = 0
        while true {
            var context = PluginContext(name: environment["PLUGBOARD_PLUGIN_NAME"] ?? executableName, options: options, restarts: connections)
            let first = plugin.declare(context)
            // Without PLUGBOARD_PLUGIN_NAME it claims the name it declares.
            if environment["PLUGBOARD_PLUGIN_NAME"] == nil {
                context.name = first.name
            }
            do {
                let session = try await RemoteConnector.connect(
                    to: endpoint, tls: files, role: .acceptor, configuration: .init(name: context.name, meta: first.wireValue), logger: logger
                )
                try await session.start()
                context.engine = EngineConnection(session: session)
                let declaration = plugin.declare(context)
                connections += 1
                logger.info("connected to plugboardd", metadata: ["plugboard.endpoint": "\(endpoint)", "plugin.name": "\(context.name)"])
                let connectedAt = ContinuousClock.now
                await withTaskExecutorPreference(session.taskExecutor) {
                    await serveCalls(session: session, declaration: declaration, logger: logger)
                }
                let reason = session.closeReason?.reason ?? "closed"
                if reason.contains("refused: ") {
                    logger.error("plugboardd refused this plugin: \(reason)", metadata: ["plugboard.endpoint": "\(endpoint)"])
                    writeStandardError("plugboard plugin: plugboardd at \(endpoint) refused plugin \(context.name): \(reason)\n")
                } else {
                    logger.warning("connection to plugboardd ended: \(reason); connecting again", metadata: ["plugboard.endpoint": "\(endpoint)"])
                }
                // Healthy for a while: the next attempt starts from the first delay again.
                if ContinuousClock.now - connectedAt > reconnectMaximumDelay { delay = reconnectInitialDelay }
            } catch {
                logger.warning("cannot connect to plugboardd: \(error); trying again in \(delay)", metadata: ["plugboard.endpoint": "\(endpoint)"])
                writeStandardError("plugboard plugin: cannot connect to plugboardd at \(endpoint): \(error)\n")
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, reconnectMaximumDelay)
        }
    }
}
