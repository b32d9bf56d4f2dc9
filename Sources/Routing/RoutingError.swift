/// Why a job call, pipeline run or hook chain failed. ``Code`` can grow without breaking callers.
public struct RoutingError: Error, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The code's name ("unknown job").
        public var description: String { name }

        /// No endpoint by that name.
        public static let unknownJob = Code("unknown job")
        /// The name is taken by another plugin.
        public static let nameConflict = Code("name conflict")
        /// The handler did not answer before the deadline.
        public static let timeout = Code("timeout")
        /// The plugin that owned the endpoint went away (crashed, stopped, withdrawn).
        public static let ownerGone = Code("owner gone")
        /// The handler answered with an error.
        public static let handlerFailed = Code("handler failed")
        /// A hook refused the operation.
        public static let vetoed = Code("vetoed")
        /// Two hooks changed the same field.
        public static let fieldConflict = Code("field conflict")
        /// A validating hook rejected the final payload.
        public static let rejected = Code("rejected")
        /// A pipeline run went on too long (a loop between plugins).
        public static let hopLimit = Code("hop limit")
        /// A pipeline run produced too many messages.
        public static let fanOutLimit = Code("fan-out limit")
        /// The handler's answer had the wrong shape.
        public static let badAnswer = Code("bad answer")
        /// Nobody provides the extension point.
        public static let noProvider = Code("no provider")
        /// A hook changed something its plugin holds no grant for (a mount source, the command).
        public static let notGranted = Code("not granted")
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for a person.
    public var reason: String
    /// The plugin involved, when there is one.
    public var plugin: String?
    /// For ``Code/handlerFailed``: the code the handler gave.
    public var handlerCode: String?

    /// An error of `code` saying `reason`, with the plugin and the handler's code when known.
    public init(_ code: Code, _ reason: String, plugin: String? = nil, handlerCode: String? = nil) {
        self.code = code
        self.reason = reason
        self.plugin = plugin
        self.handlerCode = handlerCode
    }

    /// The code and the reason, as `code: reason`.
    public var description: String { "\(code): \(reason)" }
}
