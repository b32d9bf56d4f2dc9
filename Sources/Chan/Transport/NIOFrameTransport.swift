import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A session transport over a NIO channel: a pipe pair (fds 3/4) or a unix stream socket.
///
/// Writes from any thread are appended to one outbound buffer and flushed together in one
/// event-loop turn, so a burst of frames (64 calls in flight, say) costs one buffer and
/// one `write`, not one of each per frame.
final class NIOFrameTransport: FrameTransport, Sendable {
    let channel: any Channel
    var eventLoop: any EventLoop { channel.eventLoop }
    var encodesFrames: Bool { true }

    private let handler: InboundFrameHandler
    /// Bytes written and not yet flushed, and whether a flush is already scheduled.
    private struct Outbound {
        var pending: ByteBuffer
        var flushScheduled = false
    }
    private let outbound: NIOLockedValueBox<Outbound>

    init(channel: any Channel, handler: InboundFrameHandler) {
        self.channel = channel
        self.handler = handler
        self.outbound = NIOLockedValueBox(Outbound(pending: channel.allocator.buffer(capacity: 0)))
    }

    func start(_ delegate: any FrameTransportDelegate) {
        eventLoop.execute {
            self.handler.delegate = delegate
            self.handler.deliverBacklog()
            self.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in
                self.channel.read()
            }
        }
    }

    /// Pending bytes past which a writer on the loop flushes at once instead of at the end
    /// of the turn, so the peer starts working while this side is still producing.
    static let eagerFlushBytes = 1024

    func write(encoded bytes: UnsafeRawBufferPointer) {
        let onLoop = eventLoop.inEventLoop
        let (schedule, flushNow): (Bool, Bool) = outbound.withLockedValue { o in
            o.pending.writeBytes(bytes)
            if o.pending.readableBytes >= NIOFrameTransport.eagerFlushBytes && onLoop { return (false, true) }
            if o.flushScheduled { return (false, false) }
            o.flushScheduled = true
            return (true, false)
        }
        if flushNow {
            drain()
        } else if schedule {
            eventLoop.execute { self.scheduledDrain() }
        }
    }

    private func drain() {
        let fresh = channel.allocator
        let batch: ByteBuffer? = outbound.withLockedValue { o in
            guard o.pending.readableBytes > 0 else { return nil }
            defer { o.pending = fresh.buffer(capacity: 4096) }
            return o.pending
        }
        guard let batch else { return }
        // A write that fails (EPIPE: the peer closed its reading end while its writing end
        // stays open) means nothing sent arrives any more: the session is over, and closing
        // the channel says so, instead of every later request failing one by one.
        channel.writeAndFlush(batch).whenFailure { [channel] _ in channel.close(promise: nil) }
    }

    func write(frame: Frame) {
        preconditionFailure("NIOFrameTransport carries encoded frames only")
    }

    func close() {
        eventLoop.execute {
            self.drain()
            self.channel.close(promise: nil)
        }
    }

    private func scheduledDrain() {
        outbound.withLockedValue { $0.flushScheduled = false }
        drain()
    }

    /// The handlers a frame channel needs, in order.
    static func handlers(maxFrameSize: Int) -> (ByteToMessageHandler<FrameDecoder>, InboundFrameHandler) {
        (ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)), InboundFrameHandler())
    }
}

/// Hands decoded frame bodies to the session; reports the end of the channel once.
/// `@unchecked Sendable`: like every NIO handler its state is confined to its channel's
/// event loop, which the compiler cannot see.
final class InboundFrameHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    // Only touched on the channel's event loop.
    var delegate: (any FrameTransportDelegate)?
    /// Called once when the channel becomes active (the listener makes its session then).
    var onActive: (() -> Void)?
    private var backlog: [ByteBuffer] = []
    private var endError: (any Error)??
    private var reported = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !reported else { return }  // the session has been told the end: nothing after it
        let buffer = unwrapInboundIn(data)
        if let delegate { delegate.transportReceived(encoded: buffer) } else { backlog.append(buffer) }
    }

    func deliverBacklog() {
        guard let delegate else { return }
        let frames = backlog
        backlog = []
        for frame in frames { delegate.transportReceived(encoded: frame) }
        if let endError { report(endError) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // With a session attached, it answers (GOAWAY with the reason) and then closes the
        // transport after flushing; closing here first would lose that GOAWAY.
        let attached = delegate != nil
        report(error)
        if !attached { context.close(promise: nil) }
    }

    func channelActive(context: ChannelHandlerContext) {
        let action = onActive
        onActive = nil
        action?()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        report(nil)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A pipe's read side reaching EOF: the peer is gone even if our write side is open.
        if let event = event as? ChannelEvent, event == .inputClosed {
            report(nil)
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func report(_ error: (any Error)?) {
        guard !reported else { return }
        guard let delegate else {
            if endError == nil { endError = .some(error) }
            return
        }
        reported = true
        // Let go of the session: the channel's pipeline holds this handler and the session
        // holds the channel, so keeping the delegate would keep both alive forever (found
        // by fuzzing the session: every closed session leaked its buffers).
        self.delegate = nil
        delegate.transportClosed(error: error)
    }
}
