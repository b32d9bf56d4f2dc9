import Foundation

/// Where Plugboard keeps its containers: runc's state (`--root`) and the generated bundles,
/// both under the daemon's state directory, so nothing mixes with the user's containers.
public struct ContainerRuntime: Sendable {
    /// runc, with Plugboard's own root.
    public var runc: Runc
    /// Generated OCI bundles: `plugins/NAME/config.json` for container plugins,
    /// `containers/ID/config.json` for the lifecycle's containers.
    public var bundles: String

    /// runc found in `PATH`, with root `STATE/runc` and bundles under `STATE/bundles`.
    public init(stateDirectory: String, shim: String?) throws {
        runc = try Runc.find(root: stateDirectory + "/runc", shim: shim)
        bundles = stateDirectory + "/bundles"
    }

    /// A runtime from a given runc and bundle directory.
    public init(runc: Runc, bundles: String) {
        self.runc = runc
        self.bundles = bundles
    }

    /// The runc id of a container plugin.
    public static func pluginContainerID(_ plugin: String) -> String { "plugin-" + plugin }

    /// Removes every generated bundle (at start, after ``Runc/removeAll(logger:)``): no
    /// container outlives the daemon that made it, so none is adopted, and a bundle left
    /// by a killed daemon is only litter. Returns how many were removed.
    @discardableResult
    public func removeLeftoverBundles() -> Int {
        let fm = FileManager.default
        var removed = 0
        for group in ["containers", "plugins"] {
            let dir = bundles + "/" + group
            for entry in (try? fm.contentsOfDirectory(atPath: dir)) ?? [] where (try? fm.removeItem(atPath: dir + "/" + entry)) != nil {
                removed += 1
            }
        }
        return removed
    }
}
