import Logging
import NIOCore
import NIOPosix

extension Session {
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
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrame)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
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
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrame)))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
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
        onSession: @escaping @Sendable (Session) -> Void
    ) async throws -> SessionListener {
        let maxFrame = configuration.maxFrameSize
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .childChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    let handler = InboundFrameHandler()
                    try child.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrame)))
                    try child.pipeline.syncOperations.addHandler(handler)
                    let session = Session(
                        transport: NIOFrameTransport(channel: child, handler: handler),
                        role: .acceptor,
                        configuration: configuration,
                        logger: logger
                    )
                    onSession(session)
                }
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
