import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A transport between two sessions in one process: frames are handed over as values,
/// never encoded, so an in-process plugin pays no serialization.
/// `@unchecked Sendable`: its mutable fields are guarded by `lock`, which the compiler cannot see.
final class InMemoryTransport: FrameTransport, @unchecked Sendable {
    var encodesFrames: Bool { false }
    let eventLoop: any EventLoop

    private let lock = NIOLock()
    // Guarded by `lock`.
    private weak var peer: InMemoryTransport?
    private var delegate: (any FrameTransportDelegate)?
    private var backlog: [Frame] = []
    private var closed = false
    private var peerClosedBeforeStart = false

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    static func pair() -> (InMemoryTransport, InMemoryTransport) {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let a = InMemoryTransport(eventLoop: loop)
        let b = InMemoryTransport(eventLoop: loop)
        a.peer = b
        b.peer = a
        return (a, b)
    }

    func start(_ delegate: any FrameTransportDelegate) {
        let (frames, peerClosed): ([Frame], Bool) = lock.withLock {
            self.delegate = delegate
            defer { backlog = [] }
            return (backlog, peerClosedBeforeStart)
        }
        for frame in frames { delegate.transportReceived(frame: frame) }
        if peerClosed { delegate.transportClosed(error: nil) }
    }

    func write(encoded: UnsafeRawBufferPointer) {
        preconditionFailure("InMemoryTransport carries frames as values")
    }

    func write(frame: Frame) {
        let target: InMemoryTransport? = lock.withLock { closed ? nil : peer }
        target?.deliver(frame)
    }

    private func deliver(_ frame: Frame) {
        let target: (any FrameTransportDelegate)? = lock.withLock {
            if closed { return nil }
            if delegate == nil { backlog.append(frame) }
            return delegate
        }
        target?.transportReceived(frame: frame)
    }

    func close() {
        let target: InMemoryTransport? = lock.withLock {
            if closed { return nil }
            closed = true
            return peer
        }
        target?.peerClosed()
    }

    private func peerClosed() {
        let target: (any FrameTransportDelegate)? = lock.withLock {
            if delegate == nil { peerClosedBeforeStart = true }
            return delegate
        }
        target?.transportClosed(error: nil)
    }
}
