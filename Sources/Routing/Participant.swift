import Chan

/// One request to a participant: which kind of registration, which name, and the payload.
public struct Invocation: Sendable {
    /// `job`, `hook` or `pipeline`.
    public enum Kind: String, Sendable {
        case job, hook, pipeline
    }

    public var kind: Kind
    /// The job name, hook event, or pipeline message type.
    public var name: String
    /// The argument, the hook payload, or the pipeline message body.
    public var payload: Value
    /// Extra fields for the kind (a hook's attribution, say).
    public var extra: Value

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

    /// The plugin's name.
    public let name: String
    let handler: Handler
    /// True for a remote plugin (its calls cross a session).
    public let isRemote: Bool

    /// A participant in this process.
    public static func inProcess(_ name: String, _ handler: @escaping Handler) -> Participant {
        Participant(name: name, handler: handler, isRemote: false)
    }

    /// A plugin reached over `calls`, a channel whose receiver the plugin accepted. Each
    /// invocation is a Chan request `{"kind", "name", "payload", "extra"}`; its reply is the answer.
    public static func remote(_ name: String, calls: Sender) -> Participant {
        Participant(name: name, handler: { invocation in
            do {
                // The caller's deadline governs; the session-level timeout only backs it up.
                return try await calls.request(invocation.wireValue, timeout: .seconds(3600))
            } catch let error as ChanError {
                switch error.code {
                case .remote:
                    throw RoutingError(.handlerFailed, error.reason, plugin: name, handlerCode: error.remoteCode)
                case .peerGone, .channelClosed, .channelReset, .noReply:
                    throw RoutingError(.ownerGone, "plugin \(name) went away: \(error.reason)", plugin: name)
                default:
                    throw error
                }
            }
        }, isRemote: true)
    }

    /// Calls the handler with a deadline. A handler that hangs does not hang the caller:
    /// at the deadline the caller gets ``RoutingError/Code/timeout`` and the handler's task is
    /// cancelled (the plugin itself is left alone). When `calls` is given, the call is
    /// tracked so that ``InFlightCalls/abort(owner:reason:)`` ends it at once.
    public func invoke(_ invocation: Invocation, timeout: Duration, tracking calls: InFlightCalls? = nil) async throws -> Value {
        let name = self.name
        let handler = self.handler
        return try await raceDeadline(
            timeout: timeout, owner: name, tracking: calls,
            timeoutError: RoutingError(.timeout, "plugin \(name) did not answer \(invocation.kind.rawValue) \(invocation.name) within \(timeout)", plugin: name)
        ) {
            do {
                return try await handler(invocation)
            } catch let error as RoutingError {
                throw error
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                throw RoutingError(.handlerFailed, "plugin \(name) failed \(invocation.kind.rawValue) \(invocation.name): \(error)", plugin: name)
            }
        }
    }
}
