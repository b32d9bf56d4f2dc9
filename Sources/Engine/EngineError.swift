/// Why the engine could not do what was asked.
public struct EngineError: Error, Hashable, CustomStringConvertible {
    /// What kind of failure; its description is the wire form (`engine.CODE` on the admin socket).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The code's name, as the admin socket reports it.
        public var description: String { name }

        /// `--plugin NAME` or `plugin add --builtin NAME` named no built-in.
        public static let unknownBuiltin = Code("unknown built-in")
        /// A plugin's declaration (its HELLO) or an admin request is malformed.
        public static let badDeclaration = Code("bad declaration")
        /// The plugins' `requires` form a cycle or name a job no plugin provides.
        public static let bootOrder = Code("boot order")
        /// A plugin could not be started.
        public static let startFailed = Code("start failed")
        /// A plugin asked for privileges it was not granted.
        public static let permissionDenied = Code("permission denied")
        /// A plugin name (or a job, event or type name) is not of the allowed form, or is reserved.
        public static let badName = Code("bad name")
        /// Two plugins would share a name.
        public static let duplicateName = Code("duplicate plugin name")
        /// No plugin has the given name.
        public static let unknownPlugin = Code("unknown plugin")
        /// An active plugin requires the plugin being disabled or removed.
        public static let inUse = Code("in use")
        /// The admin socket cannot be made or is served by another daemon.
        public static let adminSocket = Code("admin socket")
        /// A setting or grant is not valid.
        public static let badSetting = Code("bad setting")
        /// The state directory cannot be made or locked.
        public static let stateDirectory = Code("state directory")
        /// plugboardd ran out of a resource of its own (file descriptors) starting a plugin.
        public static let daemonOutOfResources = Code("daemon out of resources")
        /// Another plugboardd holds the state directory.
        public static let stateDirectoryInUse = Code("state directory in use")
    }

    /// What kind of failure.
    public var code: Code
    /// What happened, for a person.
    public var reason: String

    /// An error of `code`, saying `reason`.
    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    /// "CODE: REASON".
    public var description: String { "\(code): \(reason)" }
}
