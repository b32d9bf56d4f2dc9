import Chan
import PluginKit

/// `host-mount "HOST_DIR CONTAINER_DIR [ro]"`: every container created sees HOST_DIR at
/// CONTAINER_DIR (read-only with `ro`). A container.create hook appends a bind mount to the
/// spec's `mounts`.
public struct HostMountPlugin: Plugin {
    public init() {}

    /// Parses "HOST_DIR CONTAINER_DIR [ro]"; nil when it is not two absolute paths and
    /// perhaps `ro`.
    public static func parse(_ options: String) -> (source: String, destination: String, readOnly: Bool)? {
        var parts = options.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        var readOnly = false
        if parts.count == 3, parts[2] == "ro" {
            readOnly = true
            parts.removeLast()
        }
        guard parts.count == 2, parts.allSatisfy({ $0.hasPrefix("/") }) else { return nil }
        return (parts[0], parts[1], readOnly)
    }

    /// Refuses options that are not "HOST_DIR CONTAINER_DIR".
    public func checkOptions(_ options: String) throws {
        if HostMountPlugin.parse(options) == nil { throw HostMountError(options: options) }
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "host-mount", version: "1.0.0")
        let mount = HostMountPlugin.parse(context.options)
        // The one thing its hook changes: a read-write mount of HOST_DIR.
        if let mount { d.hookPrivileges = ["mount=\(mount.source)" + (mount.readOnly ? ":ro" : "")] }
        d.hook("container.create", priority: 50) { payload, _ in
            guard let mount else {
                throw HostMountError(options: context.options)
            }
            var entries = payload.mapValue ?? []
            var mounts = payload["mounts"]?.arrayValue ?? []
            mounts.append(.fields(
                ("source", .string(mount.source)), ("destination", .string(mount.destination)),
                ("type", "bind"), ("options", ["rbind", mount.readOnly ? "ro" : "rw"])
            ))
            entries.removeAll { $0.key == "mounts" }
            entries.append((key: "mounts", value: .array(mounts)))
            return .continue(.map(entries))
        }
        return d
    }
}

struct HostMountError: Error, CustomStringConvertible {
    let options: String
    var description: String { "host-mount needs \"HOST_DIR CONTAINER_DIR\" (two absolute paths, then ro for a read-only mount), got \"\(options)\"" }
}
