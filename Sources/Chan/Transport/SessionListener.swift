#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Who is at the other end of a unix socket connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, Hashable, CustomStringConvertible {
    /// The peer's process id.
    public var pid: pid_t
    /// The peer's user id.
    public var uid: uid_t
    /// The peer's group id.
    public var gid: gid_t

    /// The credentials as `pid P, uid U, gid G`.
    public var description: String { "pid \(pid), uid \(uid), gid \(gid)" }
}

/// glibc's `struct ucred` (pid, uid, gid: three 32-bit fields), which Swift's Glibc module
/// does not export (it is behind _GNU_SOURCE). Written out here so that Chan needs no C
/// shim of its own; a test checks SO_PEERCRED through it against the real peer.
struct RawPeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// A connection refused by `authorize`: NIO closes it (the child initializer failed).
struct PeerRefused: Error {}

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
    ///
    /// With `authorize`, each peer's credentials (SO_PEERCRED) are checked before anything
    /// is made for it: a refused peer costs an accept, a getsockopt and a close, and gets no
    /// HELLO. `released` is then called once for every peer `authorize` let in, when its
    /// connection closes (so a caller can count peers). When accept fails for want of
    /// descriptors the listener pauses (``AcceptBackoff``) instead of retrying at once.
    public static func bind(
        unixSocketPath path: String,
        configuration: Session.Configuration,
        logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        authorize: (@Sendable (PeerCredentials) -> Bool)? = nil,
        released: (@Sendable (PeerCredentials) -> Void)? = nil,
        onSession: @escaping @Sendable (Session) -> Void
    ) async throws -> SessionListener {
        let maxFrame = configuration.maxFrameSize
        let backoff = AcceptBackoff(listener: path, logger: logger)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelInitializer { server in
                server.eventLoop.makeCompletedFuture { try server.pipeline.syncOperations.addHandler(backoff.handler()) }
            }
            // Children read from the start: the inbound handler keeps frames until the
            // session attaches. (Turning autoRead off here raced with start() turning it on.)
            .childChannelInitializer { child in
                let handler = InboundFrameHandler()
                // The session is made once the channel is active: starting it earlier raced
                // with the channel's registration on another event loop (reads never began).
                let makeSession: @Sendable () -> Session = {
                    Session(transport: NIOFrameTransport(channel: child, handler: handler), role: .acceptor, configuration: configuration, logger: logger)
                }
                guard let authorize else {
                    handler.onActive = { onSession(makeSession()) }
                    return installFrameHandlers(child, maxFrameSize: maxFrame, handler: handler)
                }
                // Checked here, before the connection is registered or given any handler: a
                // refused peer costs an accept, a getsockopt and a close, and gets no HELLO.
                guard let provider = child as? any SocketOptionProvider else { return child.eventLoop.makeFailedFuture(PeerRefused()) }
                let credentials: EventLoopFuture<RawPeerCredentials> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                return credentials.flatMap { raw in
                    let peer = PeerCredentials(pid: raw.pid, uid: raw.uid, gid: raw.gid)
                    guard authorize(peer) else { return child.eventLoop.makeFailedFuture(PeerRefused()) }
                    if let released { child.closeFuture.whenComplete { _ in released(peer) } }
                    handler.onActive = { onSession(makeSession()) }
                    return installFrameHandlers(child, maxFrameSize: maxFrame, handler: handler)
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

/// What a listener does when `accept` fails for want of resources (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM): it stops accepting for ``pause`` and then tries again, and logs at most one line
/// per ``logInterval`` with the number of failures since the last.
///
/// Such a failure leaves the connection in the kernel's queue, so the listening socket stays
/// readable: retried at once, accept spun a core at 100% until a descriptor was freed.
/// NIO's `AcceptBackoffHandler` does not stop that (the failed read leaves the channel's
/// read pending, so it stays registered with epoll); turning the server channel's
/// `autoRead` off does — it takes the socket out of epoll — and turning it back on after
/// the pause registers it again.
public final class AcceptBackoff: Sendable {
    /// How long a listener stops accepting after such a failure.
    public static let pause: TimeAmount = .milliseconds(100)
    /// At most one log line per this long.
    public static let logInterval: Duration = .seconds(10)

    private let listener: String
    private let logger: Logger
    /// Failures not yet logged, and when the last line was written.
    private let log = NIOLockedValueBox<(unlogged: Int, last: ContinuousClock.Instant?)>((0, nil))

    /// Backoff for the listener named `listener` (a path or an address, for the log).
    public init(listener: String, logger: Logger) {
        self.listener = listener
        self.logger = logger
    }

    /// A handler for the server channel's pipeline (one per listener).
    public func handler() -> any ChannelHandler {
        PauseOnExhaustion(backoff: self)
    }

    /// Whether `error` is accept failing for want of descriptors or memory.
    static func isExhaustion(_ error: any Error) -> IOError? {
        guard let io = error as? IOError else { return nil }
        switch io.errnoCode {
        case EMFILE, ENFILE, ENOBUFS, ENOMEM: return io
        default: return nil
        }
    }

    fileprivate func failed(_ error: IOError) {
        let now = ContinuousClock.now
        let count: Int? = log.withLockedValue { s in
            s.unlogged += 1
            if let last = s.last, now - last < Self.logInterval { return nil }
            defer { s.unlogged = 0; s.last = now }
            return s.unlogged
        }
        guard let count else { return }
        logger.warning("accept failed: \(error); pausing accepts for \(Self.pause.nanoseconds / 1_000_000) ms after each failure", metadata: [
            "listener": "\(listener)", "accept.failures_since_last_report": "\(count)",
        ])
    }
}

/// On a server channel: on an exhaustion error, `autoRead` off for ``AcceptBackoff/pause``,
/// then on again. `@unchecked Sendable`: touched only on the channel's event loop.
private final class PauseOnExhaustion: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    let backoff: AcceptBackoff
    private var resume: Scheduled<Void>?

    init(backoff: AcceptBackoff) {
        self.backoff = backoff
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A refused peer: already closed, nothing to report.
        if error is PeerRefused { return }
        guard let io = AcceptBackoff.isExhaustion(error) else {
            context.fireErrorCaught(error)
            return
        }
        backoff.failed(io)
        guard resume == nil, let options = context.channel.syncOptions else { return }
        try? options.setOption(ChannelOptions.autoRead, value: false)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        resume = context.eventLoop.scheduleTask(in: AcceptBackoff.pause) {
            let (handler, context) = bound.value
            handler.resume = nil
            guard context.channel.isActive else { return }
            try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
    }
}
