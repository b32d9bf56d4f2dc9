#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix

/// Who is at the other end of a unix socket connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, Hashable, CustomStringConvertible {
    /// The peer's process id.
    public var pid: pid_t
    /// The peer's user id.
    public var uid: uid_t
    /// The peer's group id.
    public var gid: gid_t

    /// The credentials as `pid P, uid U, gid G`.
    public var description: String { "pid \(pid), uid \(uid), gid \(gid)" }
}

/// glibc's `struct ucred` (pid, uid, gid: three 32-bit fields), which Swift's Glibc module
/// does not export (it is behind _GNU_SOURCE). Written out here so that Chan needs no C
/// shim of its own; a test checks SO_PEERCRED through it against the real peer.
struct RawPeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// Accepts sessions on a unix stream socket.
public final class SessionListener: Sendable {
    private let channel: any Channel

    /// The path it listens on.
    public let path: String

    private init(channel: any Channel, path: String) {
        self.channel = channel
        self.path = path
    }

    /// Binds `path` (which must not exist) and calls `onSession` with each new, not yet
    /// started session. `onSession` runs on an event loop: start the session in a task.
    public static func bind(
        unixSocketPath path: String,
        configuration: Session.Configuration,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        authorize: (@Sendable (PeerCredentials) -> Bool)? = nil,
        onSession: @escaping @Sendable (Session) -> Void
    ) async throws -> SessionListener {
        let maxFrame = configuration.maxFrameSize
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            // Children read from the start: the inbound handler keeps frames until the
            // session attaches. (Turning autoRead off here raced with start() turning it on.)
            .childChannelInitializer { child in
                // Asked for now, checked before the session starts: a refused peer gets no
                // HELLO, only the end of the connection.
                let credentials: EventLoopFuture<RawPeerCredentials>? = authorize == nil ? nil :
                    (child as? any SocketOptionProvider)?.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                let handler = InboundFrameHandler()
                // The session is made once the channel is active: starting it earlier raced
                // with the channel's registration on another event loop (reads never began).
                handler.onActive = {
                    let session = Session(
                        transport: NIOFrameTransport(channel: child, handler: handler),
                        role: .acceptor,
                        configuration: configuration,
                        logger: logger
                    )
                    guard let authorize else {
                        onSession(session)
                        return
                    }
                    guard let credentials else {
                        session.close(reason: "refused")
                        return
                    }
                    credentials.whenComplete { result in
                        let allowed = (try? result.get()).map { authorize(PeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid)) } ?? false
                        if allowed { onSession(session) } else { session.close(reason: "refused") }
                    }
                }
                return installFrameHandlers(child, maxFrameSize: maxFrame, handler: handler)
            }
            .bind(unixDomainSocketPath: path)
            .get()
        return SessionListener(channel: channel, path: path)
    }

    /// Stops accepting; sessions already made go on.
    public func close() async throws {
        try await channel.close()
    }
}
