#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import CSpawn
import Spawn

/// Installs the frame decoder and the inbound handler on a new channel.
private func installFrameHandlers(_ channel: any Channel, maxFrameSize: Int, handler: InboundFrameHandler) -> EventLoopFuture<Void> {
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
        try channel.pipeline.syncOperations.addHandler(handler)
    }
}

/// A child process and the session on its fds 3 and 4.
public struct LaunchedSession: Sendable {
    /// The engine's end of the session (initiator), not yet started.
    public let session: Session
    /// The child.
    public let process: SpawnedProcess
}

extension Session {
    /// Starts `executable` with its session on fds 3 (it reads) and 4 (it writes) and
    /// returns our end, not yet started. The child's stdin is /dev/null; `extraDescriptors`
    /// maps more child fds (1 and 2 for its output, say).
    public static func launch(
        executable: String,
        arguments: [String] = [],
        environment: [String: String],
        extraDescriptors: [CInt: CInt] = [:],
        configuration: Configuration,
        logger: Logger
    ) async throws -> LaunchedSession {
        let toChild = try PipeDescriptors.make()
        let fromChild = try PipeDescriptors.make()
        var fds = extraDescriptors
        fds[3] = toChild.readEnd
        fds[4] = fromChild.writeEnd
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(
                SpawnOptions(executable: executable, arguments: arguments, environment: environment, fileDescriptors: fds),
                logger: logger
            )
        } catch {
            for fd in [toChild.readEnd, toChild.writeEnd, fromChild.readEnd, fromChild.writeEnd] { Glibc.close(fd) }
            throw error
        }
        // The child has its copies; ours of its ends would keep the pipes open after it dies.
        Glibc.close(toChild.readEnd)
        Glibc.close(fromChild.writeEnd)
        let session = try await overFileDescriptors(
            read: fromChild.readEnd, write: toChild.writeEnd, role: .initiator, configuration: configuration, logger: logger
        )
        return LaunchedSession(session: session, process: process)
    }

    /// A session over two file descriptors: `read` carries the peer's frames to us and
    /// `write` carries ours to the peer. A plugin passes 3 and 4; the engine passes the
    /// other ends of the pipes it gave the child. The session owns (and closes) both.
    public static func overFileDescriptors(
        read: CInt,
        write: CInt,
        role: Role,
        configuration: Configuration,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> Session {
        let handler = InboundFrameHandler()
        let maxFrame = configuration.maxFrameSize
        let channel = try await NIOPipeBootstrap(group: group)
            .channelOption(ChannelOptions.autoRead, value: false)
            .channelInitializer { installFrameHandlers($0, maxFrameSize: maxFrame, handler: handler) }
            .takingOwnershipOfDescriptors(input: read, output: write)
            .get()
        return Session(transport: NIOFrameTransport(channel: channel, handler: handler), role: role, configuration: configuration, logger: logger)
    }

    /// A session over a connection to the unix stream socket at `path`.
    public static func connect(
        unixSocketPath path: String,
        role: Role = .initiator,
        configuration: Configuration,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> Session {
        let handler = InboundFrameHandler()
        let maxFrame = configuration.maxFrameSize
        let channel = try await ClientBootstrap(group: group)
            .channelOption(ChannelOptions.autoRead, value: false)
            .channelInitializer { installFrameHandlers($0, maxFrameSize: maxFrame, handler: handler) }
            .connect(unixDomainSocketPath: path)
            .get()
        return Session(transport: NIOFrameTransport(channel: channel, handler: handler), role: role, configuration: configuration, logger: logger)
    }

    /// Two connected sessions in one process; frames pass as values, never encoded.
    /// The first is the initiator.
    public static func inMemoryPair(_ first: Configuration, _ second: Configuration, logger: Logger) -> (Session, Session) {
        let (a, b) = InMemoryTransport.pair()
        return (
            Session(transport: a, role: .initiator, configuration: first, logger: logger),
            Session(transport: b, role: .acceptor, configuration: second, logger: logger)
        )
    }
}

/// Who is at the other end of a unix socket connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, Hashable, CustomStringConvertible {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t

    public var description: String { "pid \(pid), uid \(uid), gid \(gid)" }
}

extension cspawn_peer_credentials: @retroactive @unchecked Sendable {}

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
                let credentials: EventLoopFuture<cspawn_peer_credentials>? = authorize == nil ? nil :
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
                    Task {
                        let peer = try? await credentials?.get()
                        let allowed = peer.map { authorize(PeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid)) } ?? false
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
