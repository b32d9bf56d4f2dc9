import NIOCore

/// What a session needs from a transport. Implementations: ``NIOFrameTransport`` (fd
/// pair, unix socket) and ``InMemoryTransport``.
protocol FrameTransport: AnyObject, Sendable {
    /// True when frames travel as bytes (`write(encoded:)`); false when they are handed
    /// over as values (`write(frame:)`).
    var encodesFrames: Bool { get }
    /// Timers (receive deadlines, the handshake timeout) run here.
    var eventLoop: any EventLoop { get }
    /// Begins delivering inbound frames to `delegate`.
    func start(_ delegate: any FrameTransportDelegate)
    /// Queues one encoded frame, length prefix included (the bytes are copied).
    func write(encoded: UnsafeRawBufferPointer)
    /// Hands one frame to the peer without encoding.
    func write(frame: Frame)
    /// Closes the transport; the peer sees it go away.
    func close()
}

protocol FrameTransportDelegate: AnyObject, Sendable {
    func transportReceived(encoded: ByteBuffer)
    func transportReceived(frame: Frame)
    func transportClosed(error: (any Error)?)
}
