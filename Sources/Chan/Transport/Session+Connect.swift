#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix

/// Installs the frame decoder and the inbound handler on a new channel.
func installFrameHandlers(_ channel: any Channel, maxFrameSize: Int, handler: InboundFrameHandler) -> EventLoopFuture<Void> {
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
        try channel.pipeline.syncOperations.addHandler(handler)
    }
}

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
        try await framed(role: role, configuration: configuration, logger: logger) { initializer in
            try await NIOPipeBootstrap(group: group)
                .channelOption(ChannelOptions.autoRead, value: false)
                .channelInitializer(initializer)
                .takingOwnershipOfDescriptors(input: read, output: write)
                .get()
        }
    }

    /// A session over a connection to the unix stream socket at `path`.
    public static func connect(
        unixSocketPath path: String,
        role: Role = .initiator,
        configuration: Configuration,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> Session {
        try await framed(role: role, configuration: configuration, logger: logger) { initializer in
            try await ClientBootstrap(group: group)
                .channelOption(ChannelOptions.autoRead, value: false)
                .channelInitializer(initializer)
                .connect(unixDomainSocketPath: path)
                .get()
        }
    }

    /// A session over the channel `bootstrap` makes, with the frame handlers installed by
    /// the initializer it is given.
    private static func framed(
        role: Role, configuration: Configuration, logger: Logger,
        _ bootstrap: (@escaping @Sendable (any Channel) -> EventLoopFuture<Void>) async throws -> any Channel
    ) async throws -> Session {
        let handler = InboundFrameHandler()
        let maxFrame = configuration.maxFrameSize
        let channel = try await bootstrap { installFrameHandlers($0, maxFrameSize: maxFrame, handler: handler) }
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
