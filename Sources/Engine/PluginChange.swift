import Containers

/// What an operator changed at run time, as the engine reports it once the change holds:
/// plugboardd records these in its state directory and replays them at its next start.
public enum PluginChange: Sendable, Hashable {
    /// `plugin add`: the spec it was added with (its kind, command, options, grants).
    case added(name: String, spec: AddedPlugin)
    /// `plugin rm`.
    case removed(name: String)
    /// `plugin enable`.
    case enabled(name: String)
    /// `plugin disable`.
    case disabled(name: String)
    /// `plugin set`: the keys and values as given.
    case set(name: String, settings: [String: String])
    /// `plugin grant`: jobs, hook privileges and container privileges, as given.
    case granted(name: String, grants: [String])
    /// `plugin upgrade`: how it is started from now on (its other changes stay).
    case upgraded(name: String, spec: AddedPlugin)
}

/// A plugin added at run time, in a form that can be written down and started again.
public struct AddedPlugin: Sendable, Hashable, Codable {
    /// builtin, exec or container.
    public var kind: String
    /// The built-in's name, the command (argv), or the bundle.
    public var builtin: String?
    /// The command and its arguments, for an exec plugin.
    public var command: [String]?
    /// The bundle directory, for a container plugin.
    public var bundle: String?
    /// Its option string.
    public var options: String
    /// Whether it was given every permission it asks for.
    public var grantAllPermissions: Bool
    /// Container privileges granted when it was added.
    public var privileges: [String]
    /// The image reference it was installed from (`plugin install`), for a container plugin.
    public var image: String?
    /// The image's manifest digest, pinned at install.
    public var digest: String?

    /// A record of how a plugin was added.
    public init(kind: String, builtin: String? = nil, command: [String]? = nil, bundle: String? = nil, options: String, grantAllPermissions: Bool, privileges: [String]) {
        self.kind = kind
        self.builtin = builtin
        self.command = command
        self.bundle = bundle
        self.options = options
        self.grantAllPermissions = grantAllPermissions
        self.privileges = privileges
    }
}
