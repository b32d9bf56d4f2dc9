import Foundation

/// A container plugin bundle: a directory holding `rootfs/` and the manifest `plugin.json`.
///
/// ```json
/// {
///   "description": "Adds a label to every container",
///   "entrypoint": ["/plugin/plugboard-plugin-label"],
///   "env": ["LABEL=io.plugboard.example=label"],
///   "workdir": "/",
///   "privileges": {
///     "network": "none",
///     "mounts": [{"source": "/var/log", "destination": "/host/log", "readonly": true}],
///     "capabilities": ["CAP_NET_ADMIN"],
///     "devices": ["/dev/fuse"]
///   }
/// }
/// ```
public struct PluginManifest: Sendable, Hashable, Codable {
    /// A host directory the plugin wants to see inside its container.
    public struct Mount: Sendable, Hashable, Codable {
        /// The host path (absolute).
        public var source: String
        /// Where it appears inside the container (absolute).
        public var destination: String
        /// Mount it read-only (default false).
        public var readonly: Bool?
    }

    /// What the plugin asks for beyond the safe defaults; each must be granted.
    public struct Requested: Sendable, Hashable, Codable {
        /// "none" (its own network namespace, the default) or "host".
        public var network: String?
        /// Host directories to bind into the container.
        public var mounts: [Mount]?
        /// Linux capabilities, with or without the `CAP_` prefix, in any case.
        public var capabilities: [String]?
        /// Host device nodes (`/dev/fuse`) to make available.
        public var devices: [String]?
    }

    /// What the plugin does, for people.
    public var description: String?
    /// The program and its arguments, as paths inside the rootfs.
    public var entrypoint: [String]
    /// `KEY=VALUE` entries added to the plugin's environment.
    public var env: [String]?
    /// The working directory inside the container (default "/").
    public var workdir: String?
    /// What it asks for beyond the safe defaults; nil asks for nothing.
    public var privileges: Requested?

    /// A manifest with these fields; nothing is checked here (``load(bundle:)`` checks).
    public init(description: String? = nil, entrypoint: [String], env: [String]? = nil, workdir: String? = nil, privileges: Requested? = nil) {
        self.description = description
        self.entrypoint = entrypoint
        self.env = env
        self.workdir = workdir
        self.privileges = privileges
    }

    /// The privileges asked for, one per item, in a stable order.
    public var requestedPrivileges: [Privilege] {
        guard let p = privileges else { return [] }
        var out: [Privilege] = []
        if p.network == "host" { out.append(.hostNetwork) }
        for m in p.mounts ?? [] { out.append(.mount(source: m.source, destination: m.destination, readonly: m.readonly ?? false)) }
        for c in p.capabilities ?? [] { out.append(.capability(c.uppercased().hasPrefix("CAP_") ? c.uppercased() : "CAP_" + c.uppercased())) }
        for d in p.devices ?? [] { out.append(.device(d)) }
        return out
    }

    /// Reads and checks `BUNDLE/plugin.json`; the error says what is wrong and where.
    public static func load(bundle: String) throws -> PluginManifest {
        let path = bundle + "/plugin.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ContainerError(.badBundle, "\(bundle) is not a plugin bundle: cannot read \(path)")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: bundle + "/rootfs", isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ContainerError(.badBundle, "\(bundle) is not a plugin bundle: it has no rootfs/ directory")
        }
        return try decode(data, from: path)
    }

    /// Decodes and checks a manifest's JSON; `path` names where it came from in errors.
    public static func decode(_ data: Data, from path: String) throws -> PluginManifest {
        let manifest: PluginManifest
        do {
            manifest = try JSONDecoder().decode(PluginManifest.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw ContainerError(.badBundle, "\(path): \"\(key.stringValue)\" is missing")
        } catch let DecodingError.typeMismatch(_, context) {
            throw ContainerError(.badBundle, "\(path): \(context.codingPath.map(\.stringValue).joined(separator: ".")) has the wrong type (\(context.debugDescription))")
        } catch {
            throw ContainerError(.badBundle, "\(path) is not valid JSON: \(error)")
        }
        guard let program = manifest.entrypoint.first, program.hasPrefix("/") else {
            throw ContainerError(.badBundle, "\(path): \"entrypoint\" must start with an absolute path inside the rootfs")
        }
        if let network = manifest.privileges?.network, network != "none", network != "host" {
            throw ContainerError(.badBundle, "\(path): privileges.network is \"none\" or \"host\", not \"\(network)\"")
        }
        for m in manifest.privileges?.mounts ?? [] where !m.source.hasPrefix("/") || !m.destination.hasPrefix("/") {
            throw ContainerError(.badBundle, "\(path): mount \(m.source):\(m.destination) needs two absolute paths")
        }
        for e in manifest.env ?? [] where !e.contains("=") {
            throw ContainerError(.badBundle, "\(path): env entry \"\(e)\" is not KEY=VALUE")
        }
        return manifest
    }
}
