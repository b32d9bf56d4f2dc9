#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Plugin images: OCI images whose config carries the plugin manifest (`plugin.json`) in
/// the label ``manifestLabel`` and whose layers are the bundle's `rootfs/`.
///
/// The transfer is skopeo's (it verifies every blob against its digest and applies the
/// signature policy); the unpacking is umoci's (`umoci raw unpack`: whiteouts, hard links,
/// and no path may leave the rootfs — it resolves every entry inside it). What is read
/// here by hand is only JSON: the layout's index, the manifest and the config, each
/// addressed by a digest checked to be `sha256:` and 64 hex digits before it becomes a path.
public enum PluginImages {
    /// The config label holding the plugin manifest (the bundle's `plugin.json`, as JSON text).
    public static let manifestLabel = "io.plugboard.plugin"
    /// The config label holding the plugin's name (`plugboard plugin create NAME`).
    public static let nameLabel = "io.plugboard.plugin.name"
    /// The tag a pulled image has in the daemon's temporary layout.
    public static let pulledTag = "plugin"

    /// A signature policy that accepts anything (skopeo's `insecureAcceptAnything`): what is
    /// used when the daemon was given no `--image-policy`. Digests are checked all the same.
    public static let acceptAnythingPolicy = #"{"default": [{"type": "insecureAcceptAnything"}]}"#

    /// Copies `reference` into the OCI layout `layout` (tag ``pulledTag``) with skopeo,
    /// under the signature policy at `policy`, and returns the manifest's digest. Only OCI
    /// manifests are taken as they are (`--preserve-digests`): the digest pinned is the
    /// registry's. A digest in the reference must match.
    ///
    /// `registriesD` is a registries.d(5) directory: where skopeo finds the signatures of a
    /// registry's images (`sigstore:` lookaside stores) when the policy asks for them. The
    /// signatures are checked against the policy at the source; the local copy keeps none
    /// (`--remove-signatures`: an OCI layout cannot hold them).
    public static func pull(_ reference: ImageReference, into layout: String, policy: String, registriesD: String? = nil) async throws -> String {
        let skopeo = try ExternalTool.find("skopeo")
        let digestFile = layout + ".digest"
        defer { try? FileManager.default.removeItem(atPath: digestFile) }
        var args = ["--policy", policy]
        if let registriesD { args += ["--registries.d", registriesD] }
        args += ["copy", "--quiet", "--remove-signatures", "--preserve-digests", "--digestfile", digestFile]
        if reference.isLoopbackRegistry { args.append("--src-tls-verify=false") }
        args += [reference.skopeoSource, "oci:" + layout + ":" + pulledTag]
        let r = try await skopeo.run(args)
        guard r.status.isSuccess else {
            throw ContainerError(.badImage, "cannot pull \(reference): \(explain(r.reason))")
        }
        guard let digest = (try? String(contentsOfFile: digestFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines),
              ImageReference.isDigest(digest) else {
            throw ContainerError(.badImage, "cannot pull \(reference): skopeo wrote no manifest digest")
        }
        if let pinned = reference.pinnedDigest, pinned != digest {
            throw ContainerError(.badImage, "image \(reference) has digest \(digest), not the \(pinned) asked for")
        }
        return digest
    }

    /// skopeo's reason, with what it means said first where it is known.
    static func explain(_ reason: String) -> String {
        let lower = reason.lowercased()
        if lower.contains("manifest unknown") || lower.contains("not found") && lower.contains("manifest") {
            return "no such image or tag in the registry (\(reason))"
        }
        if lower.contains("digest") && (lower.contains("mismatch") || lower.contains("did not match") || lower.contains("does not match")) {
            return "a blob does not match its digest: the image is corrupt (\(reason))"
        }
        if lower.contains("connection refused") || lower.contains("no such host") {
            return "the registry cannot be reached (\(reason))"
        }
        if lower.contains("unexpected eof") || lower.contains("connection reset") || lower.contains("broken pipe") {
            return "the registry went away during the transfer (\(reason))"
        }
        if lower.contains("signature") || lower.contains("policy") || lower.contains("rejected") {
            return "refused by the signature policy (\(reason))"
        }
        if lower.contains("preserve") && lower.contains("digest") {
            return "only OCI image manifests are installed as they are, and this image would need converting (\(reason))"
        }
        return reason
    }

    /// The plugin manifest and name an image in `layout` (tagged `tag`) carries in its config labels.
    public static func readManifest(layout: String, tag: String = pulledTag, what: String) throws -> (manifest: PluginManifest, name: String?) {
        func blob(_ digest: String?) throws -> [String: Any] {
            guard let digest, ImageReference.isDigest(digest) else { throw ContainerError(.badImage, "\(what): a descriptor has no valid sha256 digest") }
            let path = layout + "/blobs/sha256/" + digest.dropFirst(7)
            guard let data = FileManager.default.contents(atPath: path),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ContainerError(.badImage, "\(what): blob \(digest) is missing or not JSON")
            }
            return object
        }
        guard let indexData = FileManager.default.contents(atPath: layout + "/index.json"),
              let index = try? JSONSerialization.jsonObject(with: indexData) as? [String: Any],
              let manifests = index["manifests"] as? [[String: Any]] else {
            throw ContainerError(.badImage, "\(what): \(layout) is not an OCI image layout (no readable index.json)")
        }
        guard let entry = manifests.first(where: { (($0["annotations"] as? [String: Any])?["org.opencontainers.image.ref.name"] as? String) == tag }) else {
            throw ContainerError(.badImage, "\(what): no image tagged \(tag) in \(layout)")
        }
        let manifest = try blob(entry["digest"] as? String)
        let config = try blob((manifest["config"] as? [String: Any])?["digest"] as? String)
        let labels = (config["config"] as? [String: Any])?["Labels"] as? [String: Any] ?? [:]
        guard let text = labels[manifestLabel] as? String else {
            throw ContainerError(.badImage, "\(what) is not a Plugboard plugin image: its config has no \(manifestLabel) label (plugboard plugin create makes one)")
        }
        let decoded = try PluginManifest.decode(Data(text.utf8), from: "\(what): label \(manifestLabel)")
        return (decoded, labels[nameLabel] as? String)
    }

    /// Unpacks the image tagged `tag` in `layout` into `rootfs` (which must not exist) with umoci.
    public static func unpack(layout: String, tag: String = pulledTag, into rootfs: String, what: String) async throws {
        let umoci = try ExternalTool.find("umoci")
        var args = ["raw", "unpack"]
        if geteuid() != 0 { args.append("--rootless") }
        args += ["--image", layout + ":" + tag, rootfs]
        let r = try await umoci.run(args)
        guard r.status.isSuccess else {
            throw ContainerError(.badImage, "cannot unpack \(what): \(explain(r.reason))")
        }
    }

    /// Writes `text` to a new file at `path` (mode 0600).
    public static func write(_ text: String, to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ContainerError(.badImage, "cannot write \(path)")
        }
    }
}
