#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Engine
import Logging
import PluginKit
import Routing
import ServiceLifecycle
import Services

/// Boots the plugins in order, then keeps them until graceful shutdown, when it stops them
/// in reverse order.
struct EngineService: Service {
    let engine: Engine
    let specs: [PluginSpec]
    let booted: ReadinessSignal
    let grace: Duration
    let logger: Logger

    func run() async throws {
        try await engine.boot(specs)
        booted.fire()
        try? await gracefulShutdown()
        logger.info("shutting down", metadata: ["plugboard.order": "\(Array(engine.bootOrder.reversed()))"])
        await engine.shutdown(grace: grace)
        logger.info("stopped")
    }
}

/// Serves the metrics over HTTP (`--metrics-listen`) once the engine has booted.
struct MetricsHTTPService: Service {
    let address: (host: String, port: Int)
    let scrape: @Sendable () async -> String
    let after: ReadinessSignal
    let serving: ReadinessSignal
    let logger: Logger

    func run() async throws {
        // A graceful shutdown before boot completes (boot failed) ends the wait too.
        try await cancelWhenGracefulShutdown { try await after.wait() }
        let http: MetricsHTTPServer
        do {
            http = try await MetricsHTTPServer.start(host: address.host, port: address.port, scrape: scrape, logger: logger)
        } catch {
            throw ValidationError("cannot serve metrics on \(address.host):\(address.port): \(error)")
        }
        logger.info("metrics listening", metadata: ["metrics.url": "http://\(address.host):\(http.port)/metrics"])
        serving.fire()
        try? await gracefulShutdown()
        await http.close()
    }
}

/// The admin socket, once the engine has booted (and metrics serve, when asked for); its
/// opening is when plugboardd is ready.
struct AdminService: Service {
    let engine: Engine
    let path: String
    let adminGroup: gid_t?
    let builtins: [String: any Plugin]
    let after: [ReadinessSignal]
    let logger: Logger

    func run() async throws {
        // A graceful shutdown before boot completes (boot failed) ends the wait too.
        for gate in after { try await cancelWhenGracefulShutdown { try await gate.wait() } }
        let admin = try await AdminServer.start(path: path, engine: engine, adminGroup: adminGroup, builtins: { [builtins] in builtins[$0] }, logger: logger)
        await withDiscardingTaskGroup { group in
            group.addTask { await admin.serve() }
            logger.info("plugboardd ready", metadata: ["plugboard.boot_order": "\(engine.bootOrder)", "plugboard.admin_socket": "\(admin.path)"])
            SystemdNotify.send("READY=1\nSTATUS=serving \(admin.path)")
            try? await gracefulShutdown()
            SystemdNotify.send("STOPPING=1")
            await admin.close()
            // Subscriptions (plugboard events) wait for the next event: end them now.
            group.cancelAll()
        }
    }
}
