#if canImport(Glibc)
import Glibc
#endif
import Containers
import Foundation
import Routing

/// What `plugboard plugin install` asks for.
public struct ImageInstall: Sendable {
    /// The image: `HOST[:PORT]/NAME[:TAG][@sha256:HEX]` or `oci:DIR[:TAG]`.
    public var reference: String
    /// The plugin's name; nil takes the image's (its `io.plugboard.plugin.name` label, else
    /// the repository's last component).
    public var alias: String?
    /// Privileges granted one by one.
    public var privileges: Set<Privilege>
    /// `--grant-all-permissions`: every privilege the manifest asks for, and every job it calls.
    public var grantAll: Bool
    /// The plugin's option string.
    public var options: String

    /// An install of `reference`.
    public init(reference: String, alias: String? = nil, privileges: Set<Privilege> = [], grantAll: Bool = false, options: String = "") {
        self.reference = reference
        self.alias = alias
        self.privileges = privileges
        self.grantAll = grantAll
        self.options = options
    }
}

/// A pulled, checked and unpacked image, ready to run as a bundle.
struct PreparedImage: Sendable {
    let bundle: String
    let origin: ImageOrigin
    let manifest: PluginManifest
    let name: String
}

extension Engine {
    /// Where installed images' bundles live: `STATE/images` beside `STATE/bundles`.
    var imagesDirectory: String? {
        guard let runtime = containers else { return nil }
        return URL(fileURLWithPath: runtime.bundles).deletingLastPathComponent().appendingPathComponent("images").path
    }

    /// Pulls, checks and unpacks an image into a bundle of its own under `STATE/images`.
    ///
    /// Nothing is left behind on failure: the work happens in `STATE/images/tmp/ID`, removed
    /// at the end whatever happens; only a complete bundle is moved into place. `granted`
    /// decides the privilege check, done before anything is unpacked.
    func prepareImage(
        _ referenceText: String, alias: String?, granted: @Sendable (String, PluginManifest) async throws -> Void
    ) async throws -> PreparedImage {
        guard let images = imagesDirectory else {
            throw EngineError(.startFailed, "plugin images run as container plugins, which need runc, and this plugboardd has none (install Debian's runc package)")
        }
        let reference: ImageReference
        do { reference = try ImageReference(referenceText) } catch { throw EngineError(.badSetting, "\(error)") }
        let fm = FileManager.default
        let tmpRoot = images + "/tmp"
        let work = tmpRoot + "/" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        do {
            try fm.createDirectory(atPath: tmpRoot, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try fm.createDirectory(atPath: work, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        } catch {
            throw EngineError(.startFailed, "cannot make a directory for the image under \(tmpRoot): \(error)")
        }
        imageWork.withLockedValue { _ = $0.insert(work) }
        defer {
            try? fm.removeItem(atPath: work)
            imageWork.withLockedValue { _ = $0.remove(work) }
        }
        removeLeftoverImageWork(in: tmpRoot)
        do {
            var policy = imagePolicy.withLockedValue { $0 }
            if policy == nil {
                policy = work + "/policy.json"
                try PluginImages.write(PluginImages.acceptAnythingPolicy, to: work + "/policy.json")
            }
            let layout = work + "/image"
            let digest = try await PluginImages.pull(reference, into: layout, policy: policy ?? "", registriesD: imageRegistriesD.withLockedValue { $0 })
            let what = "image \(reference)"
            let (manifest, labelName) = try PluginImages.readManifest(layout: layout, what: what)
            let name = alias ?? labelName ?? reference.suggestedName
            try await granted(name, manifest)
            let bundle = work + "/bundle"
            try fm.createDirectory(atPath: bundle, withIntermediateDirectories: false)
            try await PluginImages.unpack(layout: layout, into: bundle + "/rootfs", what: what)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            guard fm.createFile(atPath: bundle + "/plugin.json", contents: try encoder.encode(manifest)) else {
                throw EngineError(.startFailed, "cannot write \(bundle)/plugin.json")
            }
            // Each install and upgrade has a directory of its own: the old version's stays
            // in place while it drains.
            let final = "\(images)/plugins/\(name)-\(digest.dropFirst(7).prefix(12))-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
            try fm.createDirectory(atPath: images + "/plugins", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            guard rename(bundle, final) == 0 else {
                throw EngineError(.startFailed, "cannot move the unpacked image to \(final): \(String(cString: strerror(errno)))")
            }
            return PreparedImage(bundle: final, origin: ImageOrigin(reference: reference.description, digest: digest), manifest: manifest, name: name)
        } catch let error as ContainerError {
            throw EngineError(error.code == .badImageReference ? .badSetting : .startFailed, error.reason)
        }
    }

    /// Removes what an install interrupted by a crash left in `STATE/images/tmp`.
    private func removeLeftoverImageWork(in tmpRoot: String) {
        let busy = imageWork.withLockedValue { $0 }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: tmpRoot)) ?? [] where !busy.contains(tmpRoot + "/" + entry) {
            try? FileManager.default.removeItem(atPath: tmpRoot + "/" + entry)
        }
    }

    /// Removes an installed image's bundle (after `plugin rm`, a failed install, an upgrade).
    func removeImageBundle(_ bundle: String) {
        guard let images = imagesDirectory, bundle.hasPrefix(images + "/plugins/") else { return }
        do {
            try FileManager.default.removeItem(atPath: bundle)
        } catch {
            logger.warning("an installed image's files could not be removed", metadata: ["plugboard.bundle": "\(bundle)", "plugboard.error": "\(error)"])
        }
    }

    /// `plugboard plugin install`: pulls the image, refuses it unless what its manifest asks
    /// for is granted (exactly as `plugin add --container`), unpacks it, pins its digest and
    /// adds it as a container plugin, recorded so that it comes back after a restart.
    public func install(_ request: ImageInstall) async throws -> (status: PluginStatus, origin: ImageOrigin) {
        if let alias = request.alias, let problem = Names.problem(withPluginName: alias) { throw EngineError(.badName, problem) }
        let existing = supervisorList.map(\.name)
        let prepared = try await prepareImage(request.reference, alias: request.alias) { name, manifest in
            if existing.contains(name) { throw EngineError(.duplicateName, "a plugin named \(name) already exists; install with --alias NAME, or upgrade it: plugboard plugin upgrade \(name) \(request.reference)") }
            let missing = Privilege.missing(manifest.requestedPrivileges, granted: request.privileges, all: request.grantAll)
            guard missing.isEmpty else { throw EngineError(.permissionDenied, Privilege.refusal(plugin: name, missing: missing)) }
        }
        var spec = PluginSpec(
            name: prepared.name, kind: .container(bundle: prepared.bundle), options: request.options, grantAll: request.grantAll,
            privileges: request.privileges, grantAllPrivileges: request.grantAll
        )
        spec.image = prepared.origin
        do {
            let status = try await add(spec)
            return (status, prepared.origin)
        } catch {
            removeImageBundle(prepared.bundle)
            throw error
        }
    }

    /// The image each installed plugin came from, by name.
    public func imageOrigins() async -> [String: ImageOrigin] {
        var out: [String: ImageOrigin] = [:]
        for (name, s) in supervisorList {
            if let image = await s.spec.image { out[name] = image }
        }
        return out
    }
}

extension Engine {
    /// Pulls and unpacks `reference` as `plugin install` does, without the privilege check
    /// and without adding anything: for plugboard-bench's `install.label`. The caller
    /// removes the bundle (``removeFetchedImage(_:)``).
    public func fetchImage(_ reference: String) async throws -> (bundle: String, digest: String) {
        let prepared = try await prepareImage(reference, alias: "fetched-\(UInt32.random(in: 0...UInt32.max))") { _, _ in }
        return (prepared.bundle, prepared.origin.digest)
    }

    /// Removes what ``fetchImage(_:)`` unpacked.
    public func removeFetchedImage(_ bundle: String) {
        removeImageBundle(bundle)
    }
}
