#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore

/// The frame handlers on a NIO channel that another layer made (a TCP connection with TLS
/// in front, for instance), so that a ``Session`` can run over it. Chan stays messaging
/// only: whatever sits below the frames (TLS, the socket's kind) is the caller's.
///
/// Install it in the channel initializer, before any byte can arrive (frames that arrive
/// before the session starts are kept), then make the session once the channel is ready
/// (active, or its TLS handshake done).
public struct FramedChannel: Sendable {
    /// The channel the frames travel on.
    public let channel: any Channel
    private let handler: InboundFrameHandler

    private init(channel: any Channel, handler: InboundFrameHandler) {
        self.channel = channel
        self.handler = handler
    }

    /// Adds the frame decoder and the session's inbound handler at the end of `channel`'s
    /// pipeline. Call on the channel's event loop (in a channel initializer).
    public static func install(on channel: any Channel, maxFrameSize: Int) throws -> FramedChannel {
        let handler = InboundFrameHandler()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
        try channel.pipeline.syncOperations.addHandler(handler)
        return FramedChannel(channel: channel, handler: handler)
    }

    /// A session over the channel; not started. The session owns the channel from now on
    /// (closing the session closes it).
    public func session(role: Session.Role, configuration: Session.Configuration, logger: Logger) -> Session {
        Session(transport: NIOFrameTransport(channel: channel, handler: handler), role: role, configuration: configuration, logger: logger)
    }
}

extension PeerCredentials {
    /// Credentials as another layer read them (SO_PEERCRED on a socket it accepted).
    public init(processID: pid_t, userID: uid_t, groupID: gid_t) {
        self.init(pid: processID, uid: userID, gid: groupID)
    }
}
