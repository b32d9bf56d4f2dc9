#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import ArgumentParser
import Containers
import Foundation

/// Where `plugboard plugin create` keeps images when no `--layout` is given: one OCI image
/// layout, each plugin image tagged with its name.
enum LocalImages {
    static func defaultLayout() -> String {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["PLUGBOARD_IMAGES"], !dir.isEmpty { return dir }
        let data = env["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? (NSHomeDirectory() + "/.local/share")
        return data + "/plugboard/images"
    }

    static func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

    /// Runs a tool, throwing its reason as a CLI error.
    static func run(_ tool: ExternalTool, _ args: [String], what: String) async throws -> ExternalTool.Result {
        let r = try await tool.run(args)
        guard r.status.isSuccess else { throw CLIError("\(what): \(tool.name) failed: \(r.reason)", code: "cli.image") }
        return r
    }

    /// `oci:DIR[:TAG]` with DIR made absolute here (the daemon resolves nothing relative).
    static func resolvingLayout(_ reference: String) -> String {
        guard reference.hasPrefix("oci:") else { return reference }
        let rest = String(reference.dropFirst(4))
        var directory = rest
        var tag = ""
        if let colon = rest.lastIndex(of: ":") {
            directory = String(rest[..<colon])
            tag = String(rest[colon...])
        }
        return "oci:" + absolute(directory) + tag
    }
}

extension PluginGroup {
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a plugin image (an OCI image layout) from a bundle: rootfs/ and plugin.json.",
            discussion: """
                The image's layers are the bundle's rootfs/; its config carries plugin.json in the label \
                io.plugboard.plugin (and NAME in io.plugboard.plugin.name). Made with umoci, here, without the daemon. \
                The layout is --layout, else $PLUGBOARD_IMAGES, else $XDG_DATA_HOME/plugboard/images \
                (~/.local/share/plugboard/images); the image is tagged NAME (or --tag).
                Examples:
                  plugboard plugin create label .build/plugins/label
                  plugboard plugin create label ./bundle --layout ./images --tag label-1.2
                  plugboard plugin push label 127.0.0.1:5000/team/label:1.2
                """
        )
        @Argument(help: "The plugin's name (and the image's tag, unless --tag).") var name: String
        @Argument(help: "The bundle: a directory with rootfs/ and plugin.json.", completion: .directory) var bundle: String
        @Option(help: ArgumentHelp("The OCI image layout to write into (made if missing).", valueName: "dir"), completion: .directory) var layout: String?
        @Option(help: "The tag in the layout (default: NAME).") var tag: String?
        @OptionGroup var output: FormatOption

        struct Created: Encodable {
            let name: String
            let image: String
            let digest: String
        }

        func run() async throws {
            let bundle = LocalImages.absolute(self.bundle)
            let layout = LocalImages.absolute(self.layout ?? LocalImages.defaultLayout())
            let tag = self.tag ?? name
            // The manifest is checked as the daemon will check it, before anything is written.
            let manifest: PluginManifest
            do { manifest = try PluginManifest.load(bundle: bundle) } catch { throw CLIError("\(error)", code: "cli.image") }
            _ = manifest
            guard let raw = FileManager.default.contents(atPath: bundle + "/plugin.json"),
                  let object = try? JSONSerialization.jsonObject(with: raw),
                  let compact = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
                throw CLIError("\(bundle)/plugin.json cannot be read as JSON", code: "cli.image")
            }
            let umoci: ExternalTool
            do { umoci = try ExternalTool.find("umoci") } catch { throw CLIError("\(error)", code: "cli.image") }
            let image = layout + ":" + tag
            let what = "plugin create \(name)"
            if !FileManager.default.fileExists(atPath: layout + "/index.json") {
                try FileManager.default.createDirectory(atPath: URL(fileURLWithPath: layout).deletingLastPathComponent().path, withIntermediateDirectories: true)
                _ = try await LocalImages.run(umoci, ["init", "--layout", layout], what: what)
            }
            // A tag made again replaces the old image (its blobs go at the gc below).
            _ = try? await umoci.run(["rm", "--image", image])
            _ = try await LocalImages.run(umoci, ["new", "--image", image], what: what)
            var insert = ["insert"]
            if geteuid() != 0 { insert.append("--rootless") }
            _ = try await LocalImages.run(umoci, insert + ["--image", image, bundle + "/rootfs", "/"], what: what)
            _ = try await LocalImages.run(umoci, [
                "config", "--image", image,
                "--config.label", PluginImages.manifestLabel + "=" + String(decoding: compact, as: UTF8.self),
                "--config.label", PluginImages.nameLabel + "=" + name,
            ], what: what)
            _ = try await LocalImages.run(umoci, ["gc", "--layout", layout], what: what)
            let digest = try Self.digest(layout: layout, tag: tag)
            try output.print("oci:\(image) \(digest)", json: Created(name: name, image: "oci:" + image, digest: digest))
        }

        /// The manifest digest the layout's index gives `tag`.
        static func digest(layout: String, tag: String) throws -> String {
            guard let data = FileManager.default.contents(atPath: layout + "/index.json"),
                  let index = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let manifests = index["manifests"] as? [[String: Any]],
                  let entry = manifests.first(where: { (($0["annotations"] as? [String: Any])?["org.opencontainers.image.ref.name"] as? String) == tag }),
                  let digest = entry["digest"] as? String else {
                throw CLIError("no image tagged \(tag) in \(layout)", code: "cli.image")
            }
            return digest
        }
    }

    struct Push: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Push a plugin image made by `plugin create` to a registry (skopeo copy).",
            discussion: """
                A registry on this host (127.0.0.0/8, ::1, localhost) is spoken to over plain HTTP, as Docker does; \
                any other over verified HTTPS. Prints the reference and the manifest digest to install by.
                Examples:
                  plugboard plugin push label 127.0.0.1:5000/team/label:1.2
                  plugboard plugin install 127.0.0.1:5000/team/label@sha256:...
                """
        )
        @Argument(help: "The image's name (its tag in the layout).") var name: String
        @Argument(help: "Where to: HOST[:PORT]/NAME[:TAG].") var reference: String
        @Option(help: ArgumentHelp("The OCI image layout it is in (as for plugin create).", valueName: "dir"), completion: .directory) var layout: String?
        @Option(help: ArgumentHelp("Sign the image with this GPG key (its fingerprint; $GNUPGHOME's keyring), as skopeo copy --sign-by does.", valueName: "fingerprint")) var signBy: String?
        @Option(help: ArgumentHelp("A registries.d(5) directory saying where signatures are written (sigstore-staging); default /etc/containers/registries.d.", valueName: "dir"), completion: .directory) var registriesD: String?
        @OptionGroup var output: FormatOption

        struct Pushed: Encodable {
            let image: String
            let digest: String
        }

        func run() async throws {
            let layout = LocalImages.absolute(self.layout ?? LocalImages.defaultLayout())
            let target: ImageReference
            do { target = try ImageReference(reference) } catch { throw CLIError("\(error)", code: "cli.image") }
            guard case .registry(_, _, _, nil) = target.source else {
                throw CLIError("push goes to a registry reference HOST[:PORT]/NAME[:TAG] (no digest: the registry gives it)", code: "cli.image")
            }
            _ = try Create.digest(layout: layout, tag: name)
            let skopeo: ExternalTool
            do { skopeo = try ExternalTool.find("skopeo") } catch { throw CLIError("\(error)", code: "cli.image") }
            let digestFile = NSTemporaryDirectory() + "/plugboard-push-\(getpid()).digest"
            defer { try? FileManager.default.removeItem(atPath: digestFile) }
            // Pushing our own image checks no signature policy (that is for pulls).
            var args = ["--insecure-policy"]
            if let registriesD { args += ["--registries.d", LocalImages.absolute(registriesD)] }
            args += ["copy", "--quiet", "--digestfile", digestFile]
            if let signBy { args += ["--sign-by", signBy] }
            if target.isLoopbackRegistry { args.append("--dest-tls-verify=false") }
            args += ["oci:" + layout + ":" + name, target.skopeoSource]
            _ = try await LocalImages.run(skopeo, args, what: "plugin push \(name) \(reference)")
            let digest = ((try? String(contentsOfFile: digestFile, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            try output.print("\(target) \(digest)", json: Pushed(image: target.description, digest: digest))
        }
    }

    struct Install: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Install a plugin from an image: the daemon pulls it, checks its privileges, pins its digest and starts it.",
            discussion: """
                REF is an image in a registry (HOST[:PORT]/NAME[:TAG], or @sha256:DIGEST to pin one) or an OCI image \
                layout (oci:DIR[:TAG]). The privileges the image's plugin.json asks for must be granted, as for \
                plugin add --container. The plugin is named after the image (--alias to choose); it is recorded and \
                comes back after a restart, from the digest pinned.
                Examples:
                  plugboard plugin install 127.0.0.1:5000/team/label:1.2
                  plugboard plugin install 127.0.0.1:5000/team/label@sha256:0899d78...
                  plugboard plugin install oci:./images:label --alias label2 --grant network=host
                """
        )
        @OptionGroup var connection: Connection
        @Argument(help: "The image.") var reference: String
        @Option(help: "The plugin's name (default: the image's).") var alias: String?
        @Flag(help: "Grant every privilege the image's manifest asks for and every job the plugin asks to call.") var grantAllPermissions = false
        @Option(help: ArgumentHelp("Grant one privilege: network=host, mount=SRC:DST[:ro], capability=CAP_NAME, device=/dev/NAME (repeatable).", valueName: "privilege")) var grant: [String] = []
        @Option(help: "The plugin's option string.") var options: String?
        @OptionGroup var output: FormatOption

        func run() async throws {
            let r = try await connection.send(Admin.PluginInstall(
                reference: LocalImages.resolvingLayout(reference), alias: alias, grantAllPermissions: grantAllPermissions,
                privileges: grant.isEmpty ? nil : grant, options: options
            ))
            try output.print("\(r.name) \(r.state) \(r.image) \(r.digest)", json: r)
        }
    }

    struct Upgrade: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace a running plugin by a new version without a pause (an image, or --exec for an exec plugin).",
            discussion: """
                The new version starts beside the old one; once it has declared itself, and still serves what other \
                plugins require of it, its registrations replace the old one's in one step, the old version's \
                in-flight calls finish (--drain, default 10s) and it is stopped. If the new version fails, it is \
                stopped and the old one goes on serving: the error says why. Same name, grants and state.
                Examples:
                  plugboard plugin upgrade label 127.0.0.1:5000/team/label:1.3
                  plugboard plugin upgrade audit --exec "/usr/local/bin/audit-plugin-2 --verbose"
                """
        )
        @OptionGroup var connection: Connection
        @Argument(help: "The plugin.", completion: DaemonNames.plugins) var name: String
        @Argument(help: "The new image (a container plugin).") var reference: String?
        @Option(help: ArgumentHelp("The new command, for an exec plugin: \"COMMAND ARGS\".", valueName: "command")) var exec: String?
        @Option(help: ArgumentHelp("How long the old version's in-flight calls may take to finish (500ms, 10s, 1m).", valueName: "duration")) var drain: String?
        @OptionGroup var output: FormatOption

        func validate() throws {
            guard (reference != nil) != (exec != nil) else { throw ValidationError("give exactly one of an image reference or --exec") }
            if let drain, Self.milliseconds(drain) == nil { throw ValidationError("--drain \(drain) is not a duration (500ms, 10s, 1m)") }
        }

        static func milliseconds(_ text: String) -> Int64? {
            let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60000)]
            for (unit, factor) in units where text.hasSuffix(unit) {
                if let n = Int64(text.dropLast(unit.count)), n >= 0 { return n * factor }
            }
            return nil
        }

        func run() async throws {
            let r = try await connection.send(Admin.PluginUpgrade(
                name: name, reference: reference.map(LocalImages.resolvingLayout), exec: exec, drainMilliseconds: drain.flatMap(Self.milliseconds)
            ))
            let image = r.image.map { " \($0) \(r.digest ?? "")" } ?? ""
            try output.print("\(r.name) upgraded \(r.oldVersion) -> \(r.newVersion)\(image)", json: r)
        }
    }
}
