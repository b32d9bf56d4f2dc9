import Chan
import Routing

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
    /// Optional steps that failed and were skipped, with why.
    public var skipped: [(plugin: String, reason: String)] = []

    /// The plugins in the order they handled messages.
    public var plugins: [String] { path.map(\.plugin) }

    /// A result from its parts.
    public init(final: [PipelineMessage], path: [Step]) {
        self.final = final
        self.path = path
    }

    /// The result on the wire (the answer to `pipeline.send`):
    /// `{"final": [MESSAGE], "path": [{"run", "plugin", "input": MESSAGE, "output": [MESSAGE]}]}`,
    /// each MESSAGE `{"type", "body"}`.
    public var value: Value {
        .fields(
            ("final", .array(final.map(\.wireValue))),
            ("skipped", .array(skipped.map { .fields(("plugin", .string($0.plugin)), ("reason", .string($0.reason))) })),
            ("path", .array(path.map { step in
                .fields(
                    ("run", .int(Int64(step.run))), ("plugin", .string(step.plugin)),
                    ("input", step.input.wireValue), ("output", .array(step.output.map(\.wireValue)))
                )
            }))
        )
    }

    /// Reads a result from its wire form; throws ``RoutingError/Code/badAnswer`` when it is not one.
    public init(value: Value) throws {
        func messages(_ v: Value?) throws -> [PipelineMessage] {
            try (v?.arrayValue ?? []).map { item in
                guard let m = PipelineMessage(wire: item) else { throw RoutingError(.badAnswer, "a pipeline result holds a message without a type: \(item)") }
                return m
            }
        }
        guard value["final"] != nil else { throw RoutingError(.badAnswer, "a pipeline result lacks \"final\"") }
        let path = try (value["path"]?.arrayValue ?? []).map { step -> Step in
            guard let input = step["input"].flatMap(PipelineMessage.init(wire:)) else {
                throw RoutingError(.badAnswer, "a pipeline step lacks its input message")
            }
            return Step(run: Int(clamping: step["run"]?.intValue ?? 0), plugin: step["plugin"]?.stringValue ?? "", input: input, output: try messages(step["output"]))
        }
        self.init(final: try messages(value["final"]), path: path)
        skipped = (value["skipped"]?.arrayValue ?? []).map { (plugin: $0["plugin"]?.stringValue ?? "", reason: $0["reason"]?.stringValue ?? "") }
    }
}
