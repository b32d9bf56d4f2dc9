import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A transport between two sessions in one process: frames are handed over as values,
/// never encoded, so an in-process plugin pays no serialization.
final class InMemoryTransport: FrameTransport, Sendable {
    var encodesFrames: Bool { false }
    let eventLoop: any EventLoop

    private struct State {
        weak var peer: InMemoryTransport?
        var delegate: (any FrameTransportDelegate)?
        /// Frames that arrived before ``start(_:)``.
        var backlog: [Frame] = []
        var closed = false
        var peerClosedBeforeStart = false
    }
    private let state = NIOLockedValueBox(State())

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    static func pair() -> (InMemoryTransport, InMemoryTransport) {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let a = InMemoryTransport(eventLoop: loop)
        let b = InMemoryTransport(eventLoop: loop)
        a.state.withLockedValue { $0.peer = b }
        b.state.withLockedValue { $0.peer = a }
        return (a, b)
    }

    func start(_ delegate: any FrameTransportDelegate) {
        let (frames, peerClosed): ([Frame], Bool) = state.withLockedValue { s in
            s.delegate = delegate
            defer { s.backlog = [] }
            return (s.backlog, s.peerClosedBeforeStart)
        }
        for frame in frames { delegate.transportReceived(frame: frame) }
        if peerClosed { delegate.transportClosed(error: nil) }
    }

    func write(encoded: UnsafeRawBufferPointer) {
        preconditionFailure("InMemoryTransport carries frames as values")
    }

    func write(frame: Frame) {
        let target: InMemoryTransport? = state.withLockedValue { $0.closed ? nil : $0.peer }
        target?.deliver(frame)
    }

    private func deliver(_ frame: Frame) {
        let target: (any FrameTransportDelegate)? = state.withLockedValue { s in
            if s.closed { return nil }
            if s.delegate == nil { s.backlog.append(frame) }
            return s.delegate
        }
        target?.transportReceived(frame: frame)
    }

    func close() {
        let target: InMemoryTransport? = state.withLockedValue { s in
            if s.closed { return nil }
            s.closed = true
            return s.peer
        }
        target?.peerClosed()
    }

    private func peerClosed() {
        let target: (any FrameTransportDelegate)? = state.withLockedValue { s in
            if s.delegate == nil { s.peerClosedBeforeStart = true }
            return s.delegate
        }
        target?.transportClosed(error: nil)
    }
}
