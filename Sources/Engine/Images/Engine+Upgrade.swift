import Chan
import Containers
import Foundation
import Routing

/// What `plugboard plugin upgrade` answers.
public struct UpgradeResult: Sendable, Codable, Hashable {
    /// The plugin.
    public var name: String
    /// The version the old run declared.
    public var oldVersion: String
    /// The version the new run declared.
    public var newVersion: String
    /// The image reference, for an image upgrade.
    public var image: String?
    /// The pinned digest, for an image upgrade.
    public var digest: String?

    enum CodingKeys: String, CodingKey {
        case name, image, digest
        case oldVersion = "old_version"
        case newVersion = "new_version"
    }
}

extension Engine {
    /// `plugboard plugin upgrade NAME REF` (a container plugin, from an image) or
    /// `--exec COMMAND` (an exec plugin): the new version is started beside the old one
    /// under a temporary runtime identity (its own container id, bundle and cgroup; the same
    /// plugin name, so the same state namespace and grants), and its declaration checked:
    /// it must still serve the jobs other plugins require of it, and register at least what
    /// the old one registered. Then its registrations replace the old ones — each job,
    /// hook and pipeline type switched under one lock, so a call finds one version or the
    /// other, never none — the old version's in-flight calls finish (within `grace`), and
    /// the old version is stopped. If the new version fails to start, to declare, or the
    /// checks, it is stopped and the old one never stopped serving; the error says why.
    public func upgrade(_ name: String, exec: String? = nil, image reference: String? = nil, grace: Duration = .seconds(10)) async throws -> UpgradeResult {
        guard let old = supervisorList.first(where: { $0.name == name })?.supervisor else {
            throw EngineError(.unknownPlugin, "no plugin named \(name); the plugins are: \(supervisorList.map(\.name).joined(separator: ", "))")
        }
        let oldSpec = await old.spec
        var newSpec = oldSpec
        var prepared: PreparedImage?
        switch (exec, reference) {
        case (nil, let reference?):
            guard case .container = oldSpec.kind else {
                throw EngineError(.badSetting, "plugin \(name) is a \(oldSpec.kindName) plugin; only a container plugin is upgraded from an image (an exec plugin: --exec COMMAND)")
            }
            let granted = oldSpec.privileges.union(await old.extraPrivileges)
            let all = oldSpec.grantAllPrivileges
            let image = try await prepareImage(reference, alias: name) { _, manifest in
                let missing = Privilege.missing(manifest.requestedPrivileges, granted: granted, all: all)
                guard missing.isEmpty else {
                    throw EngineError(.permissionDenied, Privilege.refusal(plugin: name, missing: missing)
                        + "\nFor an upgrade: plugboard plugin grant \(name) \(missing.map(\.description).joined(separator: " ")), then upgrade again.")
                }
            }
            prepared = image
            newSpec.kind = .container(bundle: image.bundle)
            newSpec.image = image.origin
        case (let exec?, nil):
            guard case .exec = oldSpec.kind else {
                throw EngineError(.badSetting, "plugin \(name) is a \(oldSpec.kindName) plugin; --exec upgrades an exec plugin (a container plugin: an image reference)")
            }
            let words = exec.split(separator: " ").map(String.init)
            guard let command = words.first else { throw EngineError(.badSetting, "--exec names no command") }
            newSpec.kind = .exec(command: command, arguments: Array(words.dropFirst()))
        default:
            throw EngineError(.badSetting, "plugin upgrade needs exactly one of an image reference or --exec COMMAND")
        }
        newSpec.instance = "u" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        newSpec.startDisabled = false
        do {
            let result = try await operations.withGate(name) { try await switchOver(name, from: old, to: newSpec, grace: grace) }
            if let added = newSpec.addedRecord { await recordChange(.upgraded(name: name, spec: added)) }
            if oldSpec.image != nil, case .container(let bundle) = oldSpec.kind { removeImageBundle(bundle) }
            bus.publish("plugin.upgraded", [
                ("plugin", .string(name)), ("old_version", .string(result.oldVersion)), ("new_version", .string(result.newVersion)),
                ("image", newSpec.image.map { Value.string($0.reference) } ?? Value.nil), ("digest", newSpec.image.map { Value.string($0.digest) } ?? Value.nil),
                ("source", "operator"),
            ])
            return UpgradeResult(name: name, oldVersion: result.oldVersion, newVersion: result.newVersion, image: newSpec.image?.reference, digest: newSpec.image?.digest)
        } catch {
            if let prepared { removeImageBundle(prepared.bundle) }
            bus.publish("plugin.upgrade-failed", [("plugin", .string(name)), ("error", .string(AdminErrorText.of(error))), ("source", "operator")])
            throw error
        }
    }

    private func switchOver(_ name: String, from old: PluginSupervisor, to spec: PluginSpec, grace: Duration) async throws -> (oldVersion: String, newVersion: String) {
        // The gate is held: nothing else changes this plugin meanwhile. It may have been
        // removed or replaced while the image was pulled.
        guard supervisorList.first(where: { $0.name == name })?.supervisor === old else {
            throw EngineError(.unknownPlugin, "plugin \(name) was removed or replaced while its upgrade was being prepared")
        }
        let oldStatus = await old.status
        guard oldStatus.state == .active, let oldDescription = oldStatus.description else {
            throw EngineError(.badSetting, "plugin \(name) is \(oldStatus.state.rawValue); upgrade replaces an active plugin without a pause (for one that is not running, remove it and install or add the new version)")
        }
        let fresh = PluginSupervisor(spec: spec, provisionalName: name, engine: parts)
        await fresh.inherit(await old.inheritance)
        func fail(_ why: String) async -> EngineError {
            // Never withdraws: the old version's registrations are untouched.
            await fresh.stop(grace: .zero, retiring: {})
            await fresh.release()
            return EngineError(.startFailed, "upgrade of plugin \(name) failed; the old version (\(oldDescription.version)) serves on: \(why)")
        }
        let description: PluginDescription
        do {
            description = try await fresh.launch()
        } catch {
            await fresh.release()
            throw EngineError(.startFailed, "upgrade of plugin \(name) failed; the old version (\(oldDescription.version)) serves on: the new version did not start: \(AdminErrorText.of(error))")
        }
        // What others require of it.
        for (other, s) in supervisorList where other != name {
            let status = await s.status
            guard status.state != .disabled, status.state != .stopped, status.state != .failed else { continue }
            let lost = (status.description?.requires ?? []).filter { oldDescription.jobs.contains($0) && !description.jobs.contains($0) }
            if !lost.isEmpty { throw await fail("plugin \(other) requires \(lost.joined(separator: ", ")), which the new version does not serve") }
        }
        // Switching registrations over replaces each one of the old version's; one the new
        // version dropped could only be withdrawn with the old version's calls in it.
        let droppedJobs = oldDescription.jobs.filter { !description.jobs.contains($0) }
        let droppedHooks = Set(oldDescription.hooks.map { "\($0.event) (\($0.phase.rawValue))" }).subtracting(description.hooks.map { "\($0.event) (\($0.phase.rawValue))" })
        let droppedTypes = Set(oldDescription.messageTypes.map(\.type)).subtracting(description.messageTypes.map(\.type))
        let droppedPoints = Set(oldDescription.provides.map(\.point)).subtracting(description.provides.map(\.point))
        let dropped = droppedJobs.map { "job \($0)" } + droppedHooks.sorted().map { "hook \($0)" } + droppedTypes.sorted().map { "pipeline type \($0)" } + droppedPoints.sorted().map { "extension point \($0)" }
        if !dropped.isEmpty {
            throw await fail("the new version no longer registers \(dropped.joined(separator: ", ")); a live upgrade keeps every registration (remove the plugin and install the new version instead)")
        }
        // The switch: from here an end of the old run is not a crash to act on.
        await old.beginRetiring()
        do {
            try await fresh.activate()
        } catch {
            await old.cancelRetiring()
            throw await fail("its registrations could not be switched over: \(AdminErrorText.of(error))")
        }
        replaceSupervisor(name, with: fresh)
        // Calls that found the old version before the switch are tracked from the moment
        // their request is on its way; a moment later every such call is tracked, and the
        // old version stops once they have all ended (or the grace is over).
        let calls = hub.inFlight
        let clock = parts.clock
        await old.stop(grace: grace, retiring: {
            try? await clock.sleep(for: .milliseconds(50))
            let mark = calls.watermark
            while calls.hasCalls(owner: name, before: mark), !Task.isCancelled {
                try? await clock.sleep(for: .milliseconds(5))
            }
        })
        await old.release()
        logger.notice("plugin upgraded", metadata: ["plugin.name": "\(name)", "plugboard.old_version": "\(oldDescription.version)", "plugboard.new_version": "\(description.version)"])
        return (oldDescription.version, description.version)
    }
}

/// An error's text as the admin socket shows it.
enum AdminErrorText {
    static func of(_ error: any Error) -> String {
        switch error {
        case let e as EngineError: return e.reason
        case let e as RoutingError: return e.reason
        case let e as ContainerError: return e.reason
        default: return "\(error)"
        }
    }
}
