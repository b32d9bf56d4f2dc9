import Chan

/// The admin commands, by their wire name (the `command` field of a request).
public enum AdminCommand: String, Codable, Sendable, CaseIterable {
    /// `plugin.ls`: every plugin, in boot order.
    case pluginList = "plugin.ls"
    /// `plugin.inspect`: everything about one plugin.
    case pluginInspect = "plugin.inspect"
    /// `plugin.add`: adds and starts a plugin.
    case pluginAdd = "plugin.add"
    /// `plugin.rm`: stops and forgets a plugin.
    case pluginRemove = "plugin.rm"
    /// `plugin.enable`: starts a disabled, stopped or failed plugin again.
    case pluginEnable = "plugin.enable"
    /// `plugin.disable`: stops a plugin and keeps it stopped.
    case pluginDisable = "plugin.disable"
    /// `plugin.restart`: restarts a plugin now, clearing a crash loop.
    case pluginRestart = "plugin.restart"
    /// `plugin.grant`: grants a plugin jobs it may call and container privileges.
    case pluginGrant = "plugin.grant"
    /// `plugin.set`: changes a plugin's supervision settings and priorities.
    case pluginSet = "plugin.set"
    /// `plugin.install`: pulls a plugin image, checks its privileges and adds it.
    case pluginInstall = "plugin.install"
    /// `plugin.upgrade`: replaces a running plugin by a new version without a pause.
    case pluginUpgrade = "plugin.upgrade"
    /// `call`: calls a job as the operator.
    case call
    case callBest = "call.best"
    case callAll = "call.all"
    /// `endpoints`: the jobs and who serves them.
    case endpoints
    /// `hooks`: the hooks, in the order they run.
    case hooks
    /// `pipeline`: the pipeline's registrations, in order.
    case pipeline
    case pipelineSend = "pipeline.send"
    /// `events`: subscribes to the daemon's events.
    case events
    /// `version`: the daemon's release and protocol version.
    case version
}

/// One admin request: its fields are the request body beside `command`, and `Reply` is
/// the `ok` value of its answer. Both ends encode and decode these with Chan's
/// ``ValueEncoder`` and ``ValueDecoder``; nobody writes admin messages as maps by hand.
public protocol AdminRequest: Codable, Sendable {
    /// What the daemon answers with.
    associatedtype Reply: Codable, Sendable
    /// The command this request is.
    static var command: AdminCommand { get }
}

extension AdminRequest {
    /// The request as it goes on the wire: its fields, then `command`.
    public func wireBody() throws -> Value {
        let fields = try ValueEncoder().encode(self)
        var entries = fields.mapValue ?? []
        entries.insert((key: "command", value: .string(Self.command.rawValue)), at: 0)
        return .map(entries)
    }

    /// Decodes a request body (its `command` already read).
    public static func decode(_ body: Value) throws -> Self {
        do {
            return try ValueDecoder().decode(Self.self, from: body)
        } catch {
            throw AdminError(.badRequest, "a \(command.rawValue) request: \(error)")
        }
    }

    /// Decodes this request's reply.
    public static func decodeReply(_ value: Value) throws -> Reply {
        do {
            return try ValueDecoder().decode(Reply.self, from: value)
        } catch {
            throw AdminError(.badReply, "the reply to \(command.rawValue): \(error)")
        }
    }
}

/// What an admin request failed with: its `code` is the error's wire code.
public struct AdminError: Error, Hashable, CustomStringConvertible, Sendable {
    /// The wire code of an admin error (`{"error": {"code": CODE, ...}}`).
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The code as sent.
        public var rawValue: String
        /// A code from its wire form.
        public init(rawValue: String) { self.rawValue = rawValue }
        /// The code as sent.
        public var description: String { rawValue }

        /// The request's body is not what its command takes.
        public static let badRequest = Code(rawValue: "admin.bad-request")
        /// No such admin command.
        public static let unknownCommand = Code(rawValue: "admin.unknown-command")
        /// The reply is not what the command answers with (a daemon of another version).
        public static let badReply = Code(rawValue: "admin.bad-reply")
        /// Any other failure: the message says what happened.
        public static let failed = Code(rawValue: "admin.error")
        /// An engine error: `engine.` and the engine's code, spaces as dashes.
        public static func engine(_ code: String) -> Code { Code(rawValue: "engine." + code.replacingOccurrences(of: " ", with: "-")) }
        /// A routing error (a call's failure): `routing.` and the routing code.
        public static func routing(_ code: String) -> Code { Code(rawValue: "routing." + code.replacingOccurrences(of: " ", with: "-")) }
        /// A plugin's own code, passed through unchanged.
        public static func plugin(_ code: String) -> Code { Code(rawValue: code) }
    }

    /// What kind of failure.
    public var code: Code
    /// What happened, for a person.
    public var message: String

    /// An error of `code` saying `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The message.
    public var description: String { message }
}
