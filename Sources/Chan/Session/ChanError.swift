/// Why a session, channel or call failed. Each case says what happened, in words a
/// person can act on; ``Code`` can grow without breaking callers.
public struct ChanError: Error, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The code's name, as shown in messages.
        public var description: String { name }

        /// The peer died, closed the transport, or said goodbye.
        public static let peerGone = Code("peer gone")
        /// No answer arrived before the deadline.
        public static let timeout = Code("timeout")
        /// The peer broke the protocol (bad frame, flow-control overrun, unknown channel).
        public static let protocolViolation = Code("protocol violation")
        /// The peer speaks a protocol version we do not.
        public static let incompatibleProtocol = Code("incompatible protocol")
        /// The channel was closed by the other end.
        public static let channelClosed = Code("channel closed")
        /// The other end aborted the channel with a reason.
        public static let channelReset = Code("channel reset")
        /// A channel end was used after it was sent away, or sent twice.
        public static let endMoved = Code("channel end moved")
        /// A channel end was used on a session that did not make it.
        public static let wrongSession = Code("wrong session")
        /// A pipe was used before either of its ends was sent to the peer.
        public static let notConnected = Code("not connected")
        /// The session was used before ``Session/start()`` or after it closed.
        public static let notStarted = Code("session not started")
        /// The peer answered a request with an error.
        public static let remote = Code("remote error")
        /// The peer closed a reply channel without answering.
        public static let noReply = Code("no reply")
        /// A reply or message had an unexpected shape.
        public static let badMessage = Code("bad message")
    }

    /// What went wrong.
    public var code: Code
    /// A sentence for a person: what happened and where.
    public var reason: String
    /// For ``Code/remote``: the error code the peer sent.
    public var remoteCode: String?

    /// Makes an error with `code` and a `reason`; `remoteCode` is the peer's own error code,
    /// for ``Code/remote``.
    public init(_ code: Code, _ reason: String, remoteCode: String? = nil) {
        self.code = code
        self.reason = reason
        self.remoteCode = remoteCode
    }

    /// `code: reason`, with the peer's error code in brackets when there is one.
    public var description: String {
        if let remoteCode { return "\(code) [\(remoteCode)]: \(reason)" }
        return "\(code): \(reason)"
    }
}
