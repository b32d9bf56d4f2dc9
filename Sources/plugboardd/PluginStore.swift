#if canImport(Glibc)
import Glibc
#endif
import Engine
import Foundation
import Logging

/// What operators changed at run time, kept in `STATE/plugins.json` and replayed at the
/// next start: plugins added (`plugin add`), and for every plugin the changes made to it
/// (`rm`, `enable`, `disable`, `set`, `grant`).
///
/// Precedence, as docker keeps its plugin store apart from `daemon.json`: the
/// configuration (file and command line) says which plugins exist and how; run-time
/// changes to a plugin win over it until the configuration's entry for that plugin
/// changes. Each record holds the fingerprint of the entry it was made against; when the
/// entry differs at a start or a reload, the record is dropped and the log says so. A
/// plugin added at run time whose name the configuration then declares gives way to it.
actor PluginStore {
    /// One plugin's recorded changes.
    struct Record: Codable, Sendable, Hashable {
        /// `admin` (added at run time) or `config` (declared by the file or the command line).
        var origin: String
        /// The configuration entry the changes were made against (`config` records).
        var fingerprint: String?
        /// How it was added (`admin` records).
        var added: AddedPlugin?
        var removed = false
        var disabled = false
        var settings: [String: String] = [:]
        var grants: [String] = []
    }

    private struct File: Codable {
        var version = 1
        var plugins: [String: Record] = [:]
    }

    let path: String
    private var file = File()
    /// The fingerprints of what the configuration declares now, by name.
    private var configured: [String: String] = [:]
    private let logger: Logger

    /// Loads `STATE/plugins.json`. A file that cannot be read is kept aside (renamed with
    /// `.unreadable-TIME`) and the log says so: nothing is dropped silently.
    init(stateDirectory: String, logger: Logger) {
        path = stateDirectory + "/plugins.json"
        self.logger = logger
        guard let data = FileManager.default.contents(atPath: path) else { return }
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            let aside = path + ".unreadable-\(Int(Date().timeIntervalSince1970))"
            _ = rename(path, aside)
            logger.error("the record of run-time plugin changes cannot be read; kept aside, starting without it", metadata: [
                "plugboard.file": "\(path)", "plugboard.kept_as": "\(aside)", "plugboard.error": "\(error)",
            ])
        }
    }

    /// Every record (for tests and `plugin inspect`).
    var records: [String: Record] { file.plugins }

    /// Takes the configuration's plugins (name → fingerprint) and drops the records it
    /// invalidates: a changed entry, a plugin no longer configured, an added plugin whose
    /// name the configuration now declares. Returns what was dropped, with why.
    @discardableResult
    func reconcile(configured now: [String: String]) -> [(String, String)] {
        configured = now
        var dropped: [(String, String)] = []
        for (name, record) in file.plugins.sorted(by: { $0.key < $1.key }) {
            if record.origin == "admin", now[name] != nil {
                dropped.append((name, "the configuration now declares a plugin of this name; the one added at run time gives way"))
            } else if record.origin == "config", let fingerprint = now[name], fingerprint != record.fingerprint {
                dropped.append((name, "its entry in the configuration changed; the changes made at run time are dropped"))
            } else if record.origin == "config", now[name] == nil {
                dropped.append((name, "it is no longer in the configuration"))
            }
        }
        for (name, why) in dropped {
            file.plugins[name] = nil
            logger.notice("run-time changes dropped", metadata: ["plugin.name": "\(name)", "plugboard.why": "\(why)"])
        }
        if !dropped.isEmpty { save() }
        return dropped
    }

    /// Records one change (called by the engine once it holds).
    func record(_ change: PluginChange) {
        switch change {
        case .added(let name, let spec):
            file.plugins[name] = Record(origin: "admin", added: spec)
        case .removed(let name):
            if file.plugins[name]?.origin == "admin" || configured[name] == nil {
                file.plugins[name] = nil
            } else {
                update(name) { $0.removed = true }
            }
        case .enabled(let name):
            update(name) { $0.disabled = false }
        case .disabled(let name):
            update(name) { $0.disabled = true }
        case .set(let name, let settings):
            update(name) { $0.settings.merge(settings) { _, new in new } }
        case .granted(let name, let grants):
            update(name) { r in r.grants += grants.filter { !r.grants.contains($0) } }
        case .upgraded(let name, let spec):
            // Only a plugin added at run time is started from its record; one the
            // configuration declares is started as the configuration says after a restart.
            if file.plugins[name]?.origin == "admin" { update(name) { $0.added = spec } }
        }
        save()
    }

    /// Forgets `name`'s record (the configuration removed or replaced it).
    func forget(_ name: String) {
        guard file.plugins.removeValue(forKey: name) != nil else { return }
        save()
    }

    private func update(_ name: String, _ change: (inout Record) -> Void) {
        var record = file.plugins[name] ?? Record(origin: "config", fingerprint: configured[name])
        change(&record)
        file.plugins[name] = record
    }

    /// Writes the file whole: to a temporary file, fsync, then rename over the old one, so
    /// a crash leaves the old record or the new, never half of one.
    private func save() {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(file)
            let temporary = path + ".new"
            let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            defer { close(fd) }
            let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard written == data.count, fsync(fd) == 0, rename(temporary, path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        } catch {
            logger.error("run-time plugin changes could not be recorded; they will not survive a restart", metadata: ["plugboard.file": "\(path)", "plugboard.error": "\(error)"])
        }
    }
}

extension PluginStore.Record {
    /// `spec` with this record's changes applied: settings, grants, disabled.
    func apply(to spec: PluginSpec) throws -> PluginSpec {
        var spec = spec
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) {
            if try spec.set(key, value) { continue }
            if key.hasPrefix("priority:"), let n = Int(value) {
                spec.hookPriorities[String(key.dropFirst("priority:".count))] = n
            } else if key.hasPrefix("pipeline-priority:"), let n = Int(value) {
                spec.pipelinePriorities[String(key.dropFirst("pipeline-priority:".count))] = n
            } else if key.hasPrefix("timeout:") {
                spec.hookTimeouts[String(key.dropFirst("timeout:".count))] = try spec.duration(value, for: key)
            }
        }
        for grant in grants {
            if let privilege = Privilege(grant) { spec.privileges.insert(privilege) } else { spec.grants.insert(grant) }
        }
        spec.startDisabled = disabled
        return spec
    }
}

import Containers
