import NIOCore
import NIOPosix

/// Reads a pipe until end of file on SwiftNIO's event loops, handing each chunk over as it
/// arrives: a child's output (container logs, runc's answers, a shell script's reply).
public enum PipeReader {
    /// Returns when the writing side is closed everywhere. Takes ownership of `fd`.
    public static func read(fd: CInt, onChunk: @escaping @Sendable ([UInt8]) -> Void) async throws {
        let channel = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ChunkHandler(onChunk: onChunk))
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .get()
        try await channel.closeFuture.get()
    }
}

private final class ChunkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let onChunk: @Sendable ([UInt8]) -> Void

    init(onChunk: @escaping @Sendable ([UInt8]) -> Void) {
        self.onChunk = onChunk
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        onChunk(Array(unwrapInboundIn(data).readableBytesView))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Only the end of input ends the read: an input-only pipe channel also reports
        // that it has no output side.
        if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
