import Logging
import NIOCore
import NIOPosix

/// Reads a child's stdout or stderr line by line into the daemon's log, tagged with the
/// plugin's name, so a plugin that prints cannot disturb the protocol on fds 3/4.
enum OutputLines {
    /// Lines longer than this are logged in pieces.
    static let maxLine = 16 * 1024

    static func follow(fd: CInt, plugin: String, stream: String, logger: Logger) async throws {
        _ = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LineLogger(plugin: plugin, stream: stream, logger: logger))
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .get()
    }
}

private final class LineLogger: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let plugin: String
    let stream: String
    let logger: Logger
    var pending: [UInt8] = []

    init(plugin: String, stream: String, logger: Logger) {
        self.plugin = plugin
        self.stream = stream
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        for byte in buffer.readableBytesView {
            if byte == UInt8(ascii: "\n") {
                emit()
            } else {
                pending.append(byte)
                if pending.count >= OutputLines.maxLine { emit() }
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !pending.isEmpty { emit() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func emit() {
        let line = String(decoding: pending, as: UTF8.self)
        pending.removeAll(keepingCapacity: true)
        logger.info("\(line)", metadata: ["plugin.name": "\(plugin)", "plugin.stream": "\(stream)"])
    }
}
