import ArgumentParser
import Engine
import PluginKit
import Logging
import Remote
import Routing
import ServiceLifecycle

/// The daemon's remote settings, resolved (flags over the file).
struct RemoteSettings: Sendable {
    var pluginListen: [RemoteEndpoint]
    var adminListen: [RemoteEndpoint]
    var adminClients: Set<String>
    var tls: TLSFiles?
}

extension Plugboardd {
    /// The file's remote settings where no flag gave them.
    mutating func mergeRemote(_ loaded: DaemonConfig) {
        if pluginListen.isEmpty { pluginListen = loaded.pluginListen ?? [] }
        if adminListen.isEmpty { adminListen = loaded.adminListen ?? [] }
        if adminClients.isEmpty { adminClients = loaded.adminClients ?? [] }
        tlsCert = tlsCert ?? loaded.tlsCert
        tlsKey = tlsKey ?? loaded.tlsKey
        tlsCA = tlsCA ?? loaded.tlsCA
    }

    /// Parses and checks the remote settings; a TCP listener without TLS files is an error.
    func remoteSettings() throws -> RemoteSettings {
        func endpoints(_ texts: [String], _ flag: String) throws -> [RemoteEndpoint] {
            try texts.map { text in
                do { return try RemoteEndpoint(parsing: text) } catch { throw ValidationError("--\(flag): \(error)") }
            }
        }
        let plugin = try endpoints(pluginListen, "plugin-listen")
        let admin = try endpoints(adminListen, "admin-listen")
        for endpoint in admin {
            guard case .tcp = endpoint else { throw ValidationError("--admin-listen takes tcp://HOST:PORT (the unix admin socket is --admin-socket), not \(endpoint)") }
        }
        var tls: TLSFiles?
        switch (tlsCert, tlsKey, tlsCA) {
        case (nil, nil, nil): tls = nil
        case (let cert?, let key?, let ca?): tls = TLSFiles(certificate: cert, key: key, ca: ca)
        default: throw ValidationError("--tls-cert, --tls-key and --tls-ca go together: give all three")
        }
        let needsTLS = admin.first ?? plugin.first(where: { if case .tcp = $0 { return true } else { return false } })
        if let needsTLS, tls == nil {
            throw ValidationError("\(needsTLS) needs mutual TLS: give --tls-cert, --tls-key and --tls-ca (see docs/REMOTE.md)")
        }
        if let tls {
            // Checked now, so that a bad file stops the daemon before any plugin starts.
            do { _ = try tls.serverContext() } catch { throw ValidationError("\(error)") }
        }
        if !admin.isEmpty && adminClients.isEmpty {
            throw ValidationError("--admin-listen serves nobody without --admin-client CN (the certificate names it serves)")
        }
        return RemoteSettings(pluginListen: plugin, adminListen: admin, adminClients: Set(adminClients), tls: tls)
    }

    /// `--plugin-remote "NAME [uid=U,...] [gid=G,...] [cn=NAME,...]"`.
    static func parseRemote(_ entry: String) throws -> PluginSpec {
        let words = entry.split(separator: " ").map(String.init)
        guard let name = words.first, !name.contains("=") else {
            throw ValidationError("--plugin-remote takes \"NAME [uid=U,...] [gid=G,...] [cn=NAME,...]\", not \"\(entry)\"")
        }
        if let problem = Names.problem(withPluginName: name) { throw ValidationError("--plugin-remote \(name): \(problem)") }
        var access = RemoteAccess()
        for word in words.dropFirst() {
            let parts = word.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw ValidationError("--plugin-remote \(name): expected uid=, gid= or cn=, not \(word)") }
            let values = parts[1].split(separator: ",").map(String.init)
            switch parts[0] {
            case "uid", "gid":
                let ids = try values.map { v -> UInt32 in
                    guard let id = UInt32(v), id != UInt32.max else { throw ValidationError("--plugin-remote \(name): \(parts[0]) takes numeric ids, not \(v)") }
                    return id
                }
                if parts[0] == "uid" { access.uids.formUnion(ids) } else { access.gids.formUnion(ids) }
            case "cn":
                access.certificateNames.formUnion(values)
            default:
                throw ValidationError("--plugin-remote \(name): expected uid=, gid= or cn=, not \(word)")
            }
        }
        return PluginSpec(name: name, kind: .remote(access))
    }
}

/// Listens for remote plugins once the engine has booted; closes the listeners at shutdown.
struct PluginListenService: Service {
    let engine: Engine
    let settings: RemoteSettings
    let after: ReadinessSignal
    let listening: ReadinessSignal
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await after.wait() }
        var listeners: [RemoteListener] = []
        for endpoint in settings.pluginListen {
            do {
                listeners.append(try await RemoteListener.bind(endpoint, tls: settings.tls, maxFrameSize: Engine.maxFrameFromPlugins, logger: logger))
            } catch {
                for l in listeners { await l.close() }
                throw ValidationError("cannot listen for plugins at \(endpoint): \(error)")
            }
        }
        listening.fire()
        await withDiscardingTaskGroup { group in
            for listener in listeners {
                group.addTask { await engine.servePlugins(on: listener) }
            }
            try? await gracefulShutdown()
            for l in listeners { await l.close() }
        }
    }
}

/// Serves the admin requests over TCP with mutual TLS (`--admin-listen`) once the engine
/// has booted; closes at shutdown.
struct AdminListenService: Service {
    let engine: Engine
    let settings: RemoteSettings
    let builtins: [String: any Plugin]
    let after: ReadinessSignal
    let listening: ReadinessSignal
    let logger: Logger

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await after.wait() }
        guard let tls = settings.tls else { throw ValidationError("--admin-listen needs --tls-cert, --tls-key and --tls-ca") }
        var servers: [AdminTLSServer] = []
        for endpoint in settings.adminListen {
            do {
                servers.append(try await AdminTLSServer.start(
                    endpoint, tls: tls, clients: settings.adminClients, engine: engine, builtins: { [builtins] in builtins[$0] }, logger: logger
                ))
            } catch {
                for s in servers { await s.close() }
                throw ValidationError("cannot listen for admin clients at \(endpoint): \(error)")
            }
        }
        listening.fire()
        await withDiscardingTaskGroup { group in
            for server in servers {
                group.addTask { await server.serve() }
            }
            try? await gracefulShutdown()
            for s in servers { await s.close() }
        }
    }
}
