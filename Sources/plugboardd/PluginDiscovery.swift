import AdminProtocol
import ArgumentParser

/// `--plugin-exec NAME`: a plugin found by name (``PluginSearchPath``, the same rule as
/// `plugboard plugin ls --available`).
extension Plugboardd {
    /// The executable of plugin `name`, or an error that says where it was looked for.
    static func discoverPlugin(_ name: String, in search: PluginSearchPath) throws -> String {
        if let path = search.find(name) { return path }
        throw ValidationError("""
            --plugin-exec \(name): no executable \(PluginSearchPath.executablePrefix)\(name) in \(search.directories.joined(separator: ":")) \
            (set PLUGBOARD_PLUGIN_PATH to add a directory; to run a command of that name, write --plugin-exec "\(name)=\(name)")
            """)
    }
}
