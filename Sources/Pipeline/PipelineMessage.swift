import Chan

/// A message routed by the pipeline: a type and a body.
public struct PipelineMessage: Sendable, Hashable, CustomStringConvertible {
    /// The message type; it decides which plugins receive the message.
    public var type: String
    /// The payload, passed to handlers as it is.
    public var body: Value

    /// Makes a message of `type` carrying `body`.
    public init(type: String, body: Value) {
        self.type = type
        self.body = body
    }

    /// `{"type": ..., "body": ...}` on the wire.
    public var wireValue: Value {
        .fields(("type", .string(type)), ("body", body))
    }

    /// Parses `{"type": ..., "body": ...}`.
    public init?(wire: Value) {
        guard let type = wire["type"]?.stringValue else { return nil }
        self.init(type: type, body: wire["body"] ?? .nil)
    }

    /// `type(body)`, for logs and errors.
    public var description: String { "\(type)(\(body))" }
}

/// What a pipeline run did: the messages that came out at the end of their chains, and
/// every step taken, plugin by plugin.
public struct PipelineResult: Sendable {
    /// One handler invocation.
    public struct Step: Sendable, Hashable {
        /// The run it belongs to (0 is the caller's message; others were spawned by a step).
        public var run: Int
        /// The plugin that handled it.
        public var plugin: String
        /// The message it received.
        public var input: PipelineMessage
        /// What it returned.
        public var output: [PipelineMessage]
    }

    /// Messages no further plugin wanted, in the order they finished.
    public var final: [PipelineMessage]
    /// Every step, in the order taken.
    public var path: [Step]

    /// The plugins in the order they handled messages.
    public var plugins: [String] { path.map(\.plugin) }
}
