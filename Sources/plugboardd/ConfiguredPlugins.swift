import Engine
import Foundation
import Logging
import PluginKit
import ServiceLifecycle
import UnixSignals

/// The plugins plugboardd runs, from its command line and its configuration file, with
/// the run-time changes recorded since (``PluginStore``); and SIGHUP's reload of the file.
actor PluginConfiguration {
    /// Plugins on the command line: required, and fixed for the daemon's life.
    private let commandLine: [PluginSpec]
    private let file: String?
    private let builtins: [String: any Plugin]
    private let store: PluginStore
    private let logger: Logger
    /// What the file declared at the last (re)load, by name.
    private var declared: [String: ConfiguredPlugin] = [:]

    init(commandLine: [PluginSpec], file: String?, builtins: [String: any Plugin], store: PluginStore, logger: Logger) {
        self.commandLine = commandLine
        self.file = file
        self.builtins = builtins
        self.store = store
        self.logger = logger
    }

    /// A fingerprint of an entry: what it declares, in a fixed order.
    static func fingerprint(_ p: ConfiguredPlugin) -> String {
        var parts = ["kind=\(p.kind)", "options=\(p.options)", "grants=\(p.grants.sorted())", "all=\(p.grantAllPermissions)", "required=\(p.required)"]
        parts += p.settings.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        parts += p.priorities.sorted { $0.key < $1.key }.map { "priority:\($0.key)=\($0.value)" }
        parts += p.pipelinePriorities.sorted { $0.key < $1.key }.map { "pipeline-priority:\($0.key)=\($0.value)" }
        return parts.joined(separator: "\u{1f}")
    }

    static func fingerprint(commandLine spec: PluginSpec) -> String {
        switch spec.kind {
        case .builtin: return "command-line builtin \(spec.builtinName ?? spec.name ?? "") \(spec.options)"
        case .exec(let command, let arguments): return "command-line exec \(([command] + arguments).joined(separator: " "))"
        case .container(let bundle): return "command-line container \(bundle)"
        case .remote(let access): return "command-line remote \(access.uids.sorted()) \(access.gids.sorted()) \(access.certificateNames.sorted())"
        }
    }

    /// The specs to boot: the command line's, the file's (a name on both: the command
    /// line's), then the plugins added at run time; each with its recorded changes.
    func initialSpecs(_ config: DaemonConfig?) async throws -> [PluginSpec] {
        let onCommandLine = Set(commandLine.compactMap(\.name))
        var fromFile: [ConfiguredPlugin] = []
        for p in config?.plugins ?? [] {
            if onCommandLine.contains(p.name) {
                logger.notice("plugin is both on the command line and in the configuration file; the command line's is used", metadata: ["plugin.name": "\(p.name)"])
            } else {
                fromFile.append(p)
            }
        }
        declared = Dictionary(fromFile.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var fingerprints: [String: String] = [:]
        for spec in commandLine { if let name = spec.name { fingerprints[name] = Self.fingerprint(commandLine: spec) } }
        for p in fromFile { fingerprints[p.name] = Self.fingerprint(p) }
        await store.reconcile(configured: fingerprints)
        let records = await store.records
        var specs: [PluginSpec] = []
        for spec in commandLine + (try fromFile.map { try $0.spec(builtins: builtins) }) {
            guard let name = spec.name, let record = records[name] else {
                specs.append(spec)
                continue
            }
            if record.removed {
                logger.notice("plugin removed at run time stays removed", metadata: ["plugin.name": "\(name)"])
                continue
            }
            specs.append(try record.apply(to: spec))
        }
        for (name, record) in records.sorted(by: { $0.key < $1.key }) where record.origin == "admin" {
            guard let added = record.added else { continue }
            do {
                var spec = try record.apply(to: try Self.spec(name, added, builtins: builtins))
                spec.required = false
                specs.append(spec)
            } catch {
                logger.error("a plugin added at run time cannot be started again", metadata: ["plugin.name": "\(name)", "plugin.error": "\(error)"])
            }
        }
        return specs
    }

    static func spec(_ name: String, _ added: AddedPlugin, builtins: [String: any Plugin]) throws -> PluginSpec {
        let kind: PluginSpec.Kind
        switch added.kind {
        case "builtin":
            guard let builtinName = added.builtin, let plugin = builtins[builtinName] else {
                throw EngineError(.unknownBuiltin, "no built-in plugin named \(added.builtin ?? "?")")
            }
            kind = .builtin(plugin)
        case "exec":
            guard let argv = added.command, let command = argv.first else { throw EngineError(.startFailed, "no command recorded") }
            kind = .exec(command: command, arguments: Array(argv.dropFirst()))
        case "container":
            guard let bundle = added.bundle else { throw EngineError(.startFailed, "no bundle recorded") }
            kind = .container(bundle: bundle)
        default:
            throw EngineError(.startFailed, "unknown kind \(added.kind)")
        }
        var spec = PluginSpec(
            name: name, kind: kind, options: added.options, grantAll: added.grantAllPermissions,
            privileges: Set(added.privileges.compactMap(Privilege.init)), grantAllPrivileges: added.grantAllPermissions && added.kind == "container"
        )
        spec.builtinName = added.builtin
        if let image = added.image, let digest = added.digest { spec.image = ImageOrigin(reference: image, digest: digest) }
        return spec
    }

    /// SIGHUP: reads the file again. A bad file changes nothing (the error is logged).
    /// Plugins it no longer declares are stopped and removed, new ones started, changed
    /// ones restarted with their new entry (their run-time changes dropped); the rest are
    /// not touched. Daemon settings (socket, state directory, log level) apply at the
    /// next start.
    func reload(engine: Engine) async {
        guard let file else {
            logger.notice("SIGHUP: no configuration file to reload (none given, and \(DaemonConfig.defaultPath) does not exist)")
            return
        }
        // systemd hears of the reload, and of its end, refused or done.
        _ = SystemdNotify.reloading()
        defer { _ = SystemdNotify.send("READY=1") }
        let config: DaemonConfig
        do {
            config = try DaemonConfig.load(file, builtinNames: builtinNames + serviceNames)
        } catch {
            logger.error("SIGHUP: configuration refused, nothing changed", metadata: ["plugboard.error": "\(error)"])
            return
        }
        let onCommandLine = Set(commandLine.compactMap(\.name))
        let next = Dictionary(config.plugins.filter { !onCommandLine.contains($0.name) }.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var stopped: [String] = [], started: [String] = [], restarted: [String] = [], failed: [String] = []
        for name in declared.keys.sorted() where next[name] == nil {
            do {
                try await engine.remove(name, force: true)
                stopped.append(name)
            } catch {
                failed.append("\(name): \(error)")
            }
            await store.forget(name)
        }
        for name in next.keys.sorted() {
            guard let entry = next[name] else { continue }
            let before = declared[name]
            if let before, Self.fingerprint(before) == Self.fingerprint(entry) { continue }
            let running = await engine.status().contains { $0.name == name }
            if before != nil || running {
                // Changed (or a run-time plugin of that name gives way): stopped, then started anew.
                try? await engine.remove(name, force: true)
                await store.forget(name)
            }
            do {
                var spec = try entry.spec(builtins: builtins)
                spec.required = false
                _ = try await engine.add(spec)
                (before == nil ? { started.append(name) } : { restarted.append(name) })()
            } catch {
                failed.append("\(name): \(error)")
            }
        }
        declared = next
        var fingerprints: [String: String] = [:]
        for spec in commandLine { if let name = spec.name { fingerprints[name] = Self.fingerprint(commandLine: spec) } }
        for (name, p) in next { fingerprints[name] = Self.fingerprint(p) }
        await store.reconcile(configured: fingerprints)
        logger.info("SIGHUP: configuration reloaded", metadata: [
            "plugboard.file": "\(file)", "plugboard.started": "\(started)", "plugboard.stopped": "\(stopped)",
            "plugboard.restarted": "\(restarted)", "plugboard.failed": "\(failed)",
        ])
    }
}

/// Reloads the configuration on SIGHUP until shutdown.
struct ReloadService: Service {
    let configuration: PluginConfiguration
    let engine: Engine
    let after: ReadinessSignal

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            let signals = await UnixSignalsSequence(trapping: .sighup)
            try await after.wait()
            for await _ in signals {
                await configuration.reload(engine: engine)
            }
        }
    }
}

import Containers
import Routing
