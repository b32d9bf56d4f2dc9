import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Reads a child's stdout or stderr line by line into the daemon's log, tagged with the
/// plugin's name, so a plugin that prints cannot disturb the protocol on fds 3/4.
enum OutputLines {
    /// Lines longer than this are logged in pieces.
    static let maxLine = 16 * 1024

    /// Logs every line until the pipe ends; `recent`, if given, keeps the last few lines
    /// (a plugin that dies before its HELLO is reported with them).
    static func follow(fd: CInt, plugin: String, stream: String, logger: Logger, recent: NIOLockedValueBox<[String]>? = nil) async throws {
        let channel = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LineLogger(plugin: plugin, stream: stream, logger: logger, recent: recent))
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .get()
        try await channel.closeFuture.get()
    }
}

private final class LineLogger: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let plugin: String
    let stream: String
    let logger: Logger
    let recent: NIOLockedValueBox<[String]>?
    var pending: [UInt8] = []

    init(plugin: String, stream: String, logger: Logger, recent: NIOLockedValueBox<[String]>?) {
        self.plugin = plugin
        self.stream = stream
        self.logger = logger
        self.recent = recent
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

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The end of input closes the channel, which ends `follow`.
        if let event = event as? ChannelEvent, event == .inputClosed { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func emit() {
        let line = String(decoding: pending, as: UTF8.self)
        pending.removeAll(keepingCapacity: true)
        recent?.withLockedValue { lines in
            lines.append(line)
            if lines.count > 3 { lines.removeFirst() }
        }
        logger.info("\(line)", metadata: ["plugin.name": "\(plugin)", "plugin.stream": "\(stream)"])
    }
}
