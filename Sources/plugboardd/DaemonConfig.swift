import Engine
import Foundation
import Remote
import Routing

/// One plugin as a configuration file declares it.
struct ConfiguredPlugin: Sendable, Hashable {
    enum Kind: Sendable, Hashable {
        /// A built-in, by its name.
        case builtin(String)
        /// A command as an argv array (no shell words are split).
        case exec([String])
        /// A bundle directory (absolute).
        case container(String)
        /// A plugin that connects in (`plugin-listen`), with who may connect as it.
        case remote(uids: [UInt32], gids: [UInt32], certificateNames: [String])
    }

    var name: String
    var kind: Kind
    var options: String
    /// Jobs, hook privileges and container privileges (the forms of ``Grants``).
    var grants: [String]
    var grantAllPermissions: Bool
    var required: Bool
    /// `plugin set` keys: restart-policy, backoff-*, start-timeout, crash-loop-*, memory, pids, cpu.
    var settings: [String: String]
    var priorities: [String: Int]
    var pipelinePriorities: [String: Int]
}

/// What a configuration file says: the daemon's settings (each a command-line flag's
/// equivalent; flags win) and its plugins. See docs/CONFIG.md.
struct DaemonConfig: Sendable, Hashable {
    var stateDir: String?
    var adminSocket: String?
    var adminGroup: String?
    var metricsListen: String?
    var logFormat: String?
    var logLevel: String?
    var shutdownGrace: Double?
    var grantAllPermissions: Bool?
    /// Where remote plugins connect (`unix:/path`, `tcp://HOST:PORT`).
    var pluginListen: [String]?
    /// The daemon's certificate, key and CA bundle for TCP listeners (PEM files).
    var tlsCert: String?
    var tlsKey: String?
    var tlsCA: String?
    /// Where admin clients connect over TCP with mutual TLS.
    var adminListen: [String]?
    /// Certificate common names served on `admin-listen`.
    var adminClients: [String]?
    var plugins: [ConfiguredPlugin] = []

    /// Where plugboardd looks when `--config` is not given.
    static let defaultPath = "/etc/plugboard/plugboard.toml"

    static let daemonKeys: Set<String> = [
        "state-dir", "admin-socket", "admin-group", "metrics-listen", "log-format", "log-level", "shutdown-grace", "grant-all-permissions", "plugins",
        "plugin-listen", "tls-cert", "tls-key", "tls-ca", "admin-listen", "admin-clients",
    ]
    static let pluginKeys: Set<String> = Set([
        "kind", "builtin", "command", "bundle", "options", "grants", "grant-all-permissions", "required", "priorities", "pipeline-priorities",
        "uids", "gids", "certificate-names",
    ] + PluginSpec.settingKeys)

    /// Reads and checks `path`: unknown keys, wrong types, bad values and bad grants are
    /// errors naming the file, the line and the key.
    static func load(_ path: String, builtinNames: [String]) throws -> DaemonConfig {
        let document = try ConfigDocument.load(path)
        let top = try ConfigTable(document, path: "", entries: document.root, allowed: daemonKeys)
        var config = DaemonConfig()
        config.stateDir = try top.string("state-dir")
        config.adminSocket = try top.string("admin-socket")
        config.adminGroup = try top.string("admin-group")
        config.metricsListen = try top.string("metrics-listen")
        if let m = config.metricsListen, (try? Plugboardd.parseHostPort(m)) == nil {
            throw top.error("metrics-listen", "takes \"HOST:PORT\", for example \"127.0.0.1:9464\", not \(m)")
        }
        config.logFormat = try top.string("log-format")
        if let f = config.logFormat, LogFormat(rawValue: f) == nil { throw top.error("log-format", "is text or json, not \(f)") }
        config.logLevel = try top.string("log-level")
        if let l = config.logLevel, Logger.Level(rawValue: l) == nil {
            throw top.error("log-level", "is trace, debug, info, notice, warning, error or critical, not \(l)")
        }
        if let node = top.entries["shutdown-grace"] {
            switch node {
            case .int(let n) where n >= 0 && n <= 3600: config.shutdownGrace = Double(n)
            case .double(let d) where d >= 0 && d <= 3600: config.shutdownGrace = d
            default: throw top.error("shutdown-grace", "is a number of seconds from 0 to 3600, not \(node.kind)")
            }
        }
        config.grantAllPermissions = try top.bool("grant-all-permissions")
        config.pluginListen = try top.strings("plugin-listen")
        for text in config.pluginListen ?? [] {
            do { _ = try RemoteEndpoint(parsing: text) } catch { throw top.error("plugin-listen", "\(error)") }
        }
        config.adminListen = try top.strings("admin-listen")
        for text in config.adminListen ?? [] {
            do {
                guard case .tcp = try RemoteEndpoint(parsing: text) else { throw top.error("admin-listen", "takes tcp://HOST:PORT (the unix admin socket is admin-socket), not \(text)") }
            } catch let error as RemoteEndpointError { throw top.error("admin-listen", "\(error)") }
        }
        config.adminClients = try top.strings("admin-clients")
        config.tlsCert = try top.string("tls-cert")
        config.tlsKey = try top.string("tls-key")
        config.tlsCA = try top.string("tls-ca")
        let tlsGiven = [config.tlsCert, config.tlsKey, config.tlsCA].filter { $0 != nil }.count
        if tlsGiven != 0 && tlsGiven != 3 { throw top.error("tls-cert", "tls-cert, tls-key and tls-ca go together: give all three") }
        if let node = top.entries["plugins"] {
            guard case .table(let plugins) = node else { throw top.error("plugins", "must be tables: [plugins.NAME]") }
            for name in plugins.keys.sorted() {
                guard let entry = plugins[name] else { continue }
                config.plugins.append(try plugin(name, entry, document, builtinNames: builtinNames))
            }
        }
        return config
    }

    private static func plugin(_ name: String, _ node: ConfigNode, _ document: ConfigDocument, builtinNames: [String]) throws -> ConfiguredPlugin {
        let path = "plugins." + name
        guard case .table(let entries) = node else { throw document.error(path, "must be a table: [\(path)]") }
        if let problem = Names.problem(withPluginName: name) { throw document.error(path, problem) }
        let t = try ConfigTable(document, path: path, entries: entries, allowed: pluginKeys)
        guard let kindText = try t.string("kind") else { throw t.error("kind", "is missing: builtin, exec or container") }
        let kind: ConfiguredPlugin.Kind
        switch kindText {
        case "builtin":
            let builtin = try t.string("builtin") ?? name
            guard builtinNames.contains(builtin) else {
                throw t.error("builtin", "no built-in plugin is named \(builtin); the built-ins are \(builtinNames.joined(separator: ", "))")
            }
            kind = .builtin(builtin)
        case "exec":
            // Without a command: plugboard-plugin-NAME, found by name (docs/INSTALL.md).
            if let command = try t.strings("command") {
                guard let first = command.first, !first.isEmpty else { throw t.error("command", "names no command: give [\"/path/to/plugin\", \"ARG\", ...]") }
                kind = .exec(command)
            } else {
                kind = .exec([])
            }
        case "container":
            guard let bundle = try t.string("bundle") else { throw t.error("bundle", "is missing: a container plugin needs its bundle directory") }
            guard bundle.hasPrefix("/") else { throw t.error("bundle", "must be an absolute path, not \(bundle)") }
            kind = .container(bundle)
        case "remote":
            kind = .remote(uids: try t.ids("uids"), gids: try t.ids("gids"), certificateNames: try t.strings("certificate-names") ?? [])
        default:
            throw t.error("kind", "is builtin, exec, container or remote, not \(kindText)")
        }
        for key in ["uids", "gids", "certificate-names"] where t.entries[key] != nil && kindText != "remote" {
            throw t.error(key, "applies to a remote plugin only")
        }
        for key in ["builtin", "command", "bundle"] where t.entries[key] != nil {
            let belongs = (key == "builtin" && kindText == "builtin") || (key == "command" && kindText == "exec") || (key == "bundle" && kindText == "container")
            if !belongs { throw t.error(key, "does not apply to a \(kindText) plugin") }
        }
        let grants = try t.strings("grants") ?? []
        for g in grants {
            if let problem = Grants.problem(with: g) { throw t.error("grants", problem) }
        }
        var settings: [String: String] = [:]
        var probe = PluginSpec(name: name, kind: .exec(command: "/bin/true", arguments: []))
        for key in PluginSpec.settingKeys {
            guard let text = try t.settingText(key) else { continue }
            do {
                _ = try probe.set(key, text)
            } catch let error as EngineError {
                throw t.error(key, error.reason)
            }
            settings[key] = text
        }
        let priorities = try t.intTable("priorities") ?? [:]
        let pipelinePriorities = try t.intTable("pipeline-priorities") ?? [:]
        return ConfiguredPlugin(
            name: name, kind: kind, options: try t.string("options") ?? "", grants: grants,
            grantAllPermissions: try t.bool("grant-all-permissions") ?? false, required: try t.bool("required") ?? false,
            settings: settings, priorities: priorities, pipelinePriorities: pipelinePriorities
        )
    }
}

import Logging
