/// Request/reply, built on nesting: a request is a message carrying the body and a
/// fresh reply ``Sender``; the reply is one message on that channel, sent with `fin`.
///
/// Wire shapes (see docs/PROTOCOL.md):
/// - request: `{"body": <value>, "reply": <ext 0x50 sender>}`
/// - reply:   `{"ok": <value>}` or `{"error": {"code": <string>, "message": <string>}}`
public struct Request: Sendable {
    /// The request's argument.
    public var body: Value
    /// Where the one reply goes.
    public var reply: Sender

    /// Parses a request message; throws ``ChanError/Code/badMessage`` for other shapes.
    public init(_ message: Value) throws {
        guard let body = message["body"], case .channel(.sender(let reply))? = message["reply"] else {
            throw ChanError(.badMessage, "a request is {\"body\": value, \"reply\": sender}, got \(Frame.brief(message))")
        }
        self.body = body
        self.reply = reply
    }

    /// Answers with a result, closing the reply channel. Channel ends in the result that
    /// belong to another session (a byte stream a plugin returned, forwarded by the daemon)
    /// are bridged into the reply's session, with pumps owned by that session.
    public func respond(_ result: Value) async throws {
        let session = reply.owningSession
        guard session.holdsForeignEnds(result) else {
            return try await reply.finish(with: .map([(key: .string("ok"), value: result)]))
        }
        let (bridged, pumps) = try session.bridge(result)
        try await reply.finish(with: .map([(key: .string("ok"), value: bridged)]))
        for pump in pumps { session.tasks.run(pump) }
    }

    /// Answers with an error, closing the reply channel.
    public func fail(code: String, message: String) async throws {
        try await reply.finish(with: .map([
            (key: .string("error"), value: .map([
                (key: .string("code"), value: .string(code)),
                (key: .string("message"), value: .string(message)),
            ])),
        ]))
    }
}

/// A request that has been sent and whose reply has not been read yet.
public struct PendingReply: Sendable {
    let receiver: Receiver
    let timeout: Duration

    /// Waits for the reply; the same errors as ``Sender/request(_:timeout:)``.
    public func reply() async throws -> Value {
        let reply: Value?
        do {
            reply = try await receiver.receive(timeout: timeout)
        } catch let error as ChanError where error.code == .timeout {
            throw ChanError(.timeout, "no reply within \(timeout.short)")
        }
        guard let reply else {
            throw ChanError(.noReply, "the peer closed the reply channel without answering")
        }
        return try Sender.unwrapReply(reply)
    }

    /// Stops waiting: a pending ``reply()`` fails at once and a late reply is dropped.
    public func abandon() {
        receiver.close()
    }
}

extension Sender {
    /// Sends a request and returns once it is on its way, so the caller can keep using
    /// channel ends it put in `body` before the reply comes.
    public func startRequest(_ body: Value, timeout: Duration = .seconds(10)) async throws -> PendingReply {
        let (replySender, replyReceiver) = try session.makePipe()
        try await send(.map([
            (key: .string("body"), value: body),
            (key: .string("reply"), value: .channel(.sender(replySender))),
        ]))
        return PendingReply(receiver: replyReceiver, timeout: timeout)
    }

    /// Sends `body` with a fresh reply channel and waits for the one reply.
    ///
    /// Throws ``ChanError/Code/remote`` when the peer answered with an error,
    /// ``ChanError/Code/timeout`` past `timeout`, ``ChanError/Code/noReply`` when the
    /// peer dropped the reply channel, and ``ChanError/Code/peerGone`` at once when the
    /// peer dies while the request is in flight.
    public func request(_ body: Value, timeout: Duration = .seconds(10)) async throws -> Value {
        let (replySender, replyReceiver) = try session.makePipe()
        try await send(.map([
            (key: .string("body"), value: body),
            (key: .string("reply"), value: .channel(.sender(replySender))),
        ]))
        return try await PendingReply(receiver: replyReceiver, timeout: timeout).reply()
    }

    static func unwrapReply(_ reply: Value) throws -> Value {
        if let ok = reply["ok"] { return ok }
        if let error = reply["error"] {
            throw ChanError(
                .remote,
                error["message"]?.stringValue ?? "no message",
                remoteCode: error["code"]?.stringValue ?? "unknown"
            )
        }
        throw ChanError(.badMessage, "a reply is {\"ok\": value} or {\"error\": {...}}, got \(Frame.brief(reply))")
    }
}

extension Receiver {
    /// The next request on this channel, or `nil` at its end.
    public func nextRequest(timeout: Duration? = nil) async throws -> Request? {
        guard let message = try await receive(timeout: timeout) else { return nil }
        return try Request(message)
    }
}
