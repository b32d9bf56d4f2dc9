import Chan
import NIOConcurrencyHelpers

/// One request to a participant: which kind of registration, which name, and the payload.
public struct Invocation: Sendable {
    /// `job`, `hook` or `pipeline`.
    public enum Kind: String, Sendable {
        /// A job call, a hook run, or a pipeline message.
        case job, hook, pipeline
    }

    /// What is invoked: a job, a hook or a pipeline handler.
    public var kind: Kind
    /// The job name, hook event, or pipeline message type.
    public var name: String
    /// The argument, the hook payload, or the pipeline message body.
    public var payload: Value
    /// Extra fields for the kind (a hook's attribution, say).
    public var extra: Value

    /// An invocation of `name` of `kind`; `extra` is nil unless the kind needs it.
    public init(kind: Kind, name: String, payload: Value, extra: Value = .nil) {
        self.kind = kind
        self.name = name
        self.payload = payload
        self.extra = extra
    }

    /// The request body on the wire: `{"kind": ..., "name": ..., "payload": ..., "extra": ...}`.
    public var wireValue: Value {
        var entries: [(key: Value, value: Value)] = [
            (key: "kind", value: .string(kind.rawValue)),
            (key: "name", value: .string(name)),
            (key: "payload", value: payload),
        ]
        if !extra.isNil { entries.append((key: "extra", value: extra)) }
        return .map(entries)
    }

    /// Parses a request body sent by the engine.
    public init(wire: Value) throws {
        guard let kindName = wire["kind"]?.stringValue, let kind = Kind(rawValue: kindName),
              let name = wire["name"]?.stringValue
        else {
            throw RoutingError(.badAnswer, "an invocation is {\"kind\": job|hook|pipeline, \"name\": ..., \"payload\": ...}")
        }
        self.init(kind: kind, name: name, payload: wire["payload"] ?? .nil, extra: wire["extra"] ?? .nil)
    }
}

/// How a registration's handler is reached: a closure in this process, or a plugin at the
/// other end of a Chan session. The routing models treat both alike.
public struct Participant: Sendable {
    /// Handles one invocation and returns its answer (see each model for the shape).
    public typealias Handler = @Sendable (Invocation) async throws -> Value

    /// Explains why a remote plugin went away (its exit status, say), when asked after its session died.
    public typealias DepartureExplainer = @Sendable () async -> String?

    private enum Route: Sendable {
        case local(Handler)
        case remote(Sender, DepartureExplainer?)
    }

    /// The plugin's name.
    public let name: String
    private let route: Route

    /// True for a remote plugin (its calls cross a session).
    public var isRemote: Bool {
        if case .remote = route { return true }
        return false
    }

    /// A participant in this process.
    public static func inProcess(_ name: String, _ handler: @escaping Handler) -> Participant {
        Participant(name: name, route: .local(handler))
    }

    /// A plugin reached over `calls`, a channel whose receiver the plugin accepted. Each
    /// invocation is a Chan request `{"kind", "name", "payload", "extra"}`; its reply is the answer.
    ///
    /// `explainDeparture`, when given, is asked why the plugin went away when its session
    /// dies mid-call, so that the caller's error names the exit status or signal.
    public static func remote(_ name: String, calls: Sender, explainDeparture: DepartureExplainer? = nil) -> Participant {
        Participant(name: name, route: .remote(calls, explainDeparture))
    }

    /// Calls the handler with a deadline. A handler that hangs does not hang the caller:
    /// at the deadline the caller gets ``RoutingError/Code/timeout`` (the plugin itself is
    /// left alone). When `calls` is given, the call is tracked so that
    /// ``InFlightCalls/abort(owner:reason:)`` ends it at once.
    public func invoke(_ invocation: Invocation, timeout: Duration, tracking calls: InFlightCalls? = nil) async throws -> Value {
        let name = self.name
        // Built only when needed: formatting the Duration on every call showed up in profiles.
        let timeoutError: @Sendable () -> RoutingError = { RoutingError(.timeout, "plugin \(name) did not answer \(invocation.kind.rawValue) \(invocation.name) within \(timeout.short)", plugin: name) }
        switch route {
        case .local(let handler):
            // A closure cannot be interrupted, so it runs in its own task and the caller races it.
            return try await raceDeadline(timeout: timeout, owner: name, tracking: calls, timeoutError: timeoutError) {
                do {
                    return try await handler(invocation)
                } catch let error as RoutingError {
                    throw error
                } catch is CancellationError {
                    throw CancellationError()
                } catch let error as PluginError {
                    throw RoutingError(.handlerFailed, error.message, plugin: name, handlerCode: error.code)
                } catch {
                    throw RoutingError(.handlerFailed, "plugin \(name) failed \(invocation.kind.rawValue) \(invocation.name): \(error)", plugin: name)
                }
            }
        case .remote(let sender, let explain):
            // The session already bounds the wait and fails it when the peer dies, so the
            // caller awaits the reply directly: no extra task, no thread hop.
            return try await invokeRemote(sender, invocation, timeout: timeout, timeoutError: timeoutError, tracking: calls, explain: explain)
        }
    }

    private func invokeRemote(
        _ sender: Sender, _ invocation: Invocation, timeout: Duration, timeoutError: @Sendable () -> RoutingError, tracking calls: InFlightCalls?,
        explain: DepartureExplainer?
    ) async throws -> Value {
        let name = self.name
        let aborted = NIOLockedValueBox<RoutingError?>(nil)
        var token: UInt64?
        do {
            // Channel ends from another session (a client's upload stream) get counterparts
            // on the plugin's session, with pumps between them.
            var wire = invocation
            let (payload, pumps) = try sender.owningSession.bridge(invocation.payload)
            wire.payload = payload
            let pending = try await sender.startRequest(wire.wireValue, timeout: timeout)
            for pump in pumps { sender.owningSession.tasks.run(pump) }
            if let calls {
                token = calls.register(owner: name) { error in
                    aborted.withLockedValue { $0 = error }
                    pending.abandon()
                }
            }
            defer { if let token { calls?.remove(token) } }
            return try await pending.reply()
        } catch let error as ChanError {
            if let abort = aborted.withLockedValue({ $0 }) { throw abort }
            switch error.code {
            case .timeout:
                throw timeoutError()
            case .remote:
                throw RoutingError(.handlerFailed, error.reason, plugin: name, handlerCode: error.remoteCode)
            case .channelReset where sender.owningSession.closeReason == nil:
                // The plugin lives on and aborted this one reply: a failure, not a departure.
                throw RoutingError(.handlerFailed, "plugin \(name) aborted its reply to \(invocation.kind.rawValue) \(invocation.name): \(error.reason)", plugin: name)
            case .badMessage:
                throw RoutingError(.badAnswer, "plugin \(name) answered \(invocation.kind.rawValue) \(invocation.name) with a malformed reply: \(error.reason)", plugin: name)
            case .peerGone, .channelClosed, .channelReset, .noReply, .protocolViolation:
                let why = await explain?() ?? error.reason
                throw RoutingError(.ownerGone, "plugin \(name) went away: \(why)", plugin: name)
            default:
                throw error
            }
        }
    }
}
