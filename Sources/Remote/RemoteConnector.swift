import Chan
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// Connects to a plugboardd that listens for remote plugins (or admin clients): a unix
/// socket, or TCP with mutual TLS.
public enum RemoteConnector {
    /// A session over a new connection to `endpoint`, not started, with `role` (a plugin is
    /// the acceptor, as on fds 3/4). Over TCP it returns once the TLS handshake is done, and
    /// throws what the handshake said when it failed (the daemon refused the certificate, or
    /// the daemon's certificate is not signed by our CA).
    public static func connect(
        to endpoint: RemoteEndpoint, tls: TLSFiles?, role: Session.Role, configuration: Session.Configuration, logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> Session {
        let maxFrame = configuration.maxFrameSize
        let made = NIOLockedValueBox<FramedChannel?>(nil)
        switch endpoint {
        case .unix(let path):
            _ = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let framed = try FramedChannel.install(on: channel, maxFrameSize: maxFrame)
                        made.withLockedValue { $0 = framed }
                    }
                }
                .connect(unixDomainSocketPath: path)
                .get()
            return try framedOf(made).session(role: role, configuration: configuration, logger: logger)
        case .tcp(let host, let port):
            guard let tls else {
                throw TLSSetupError("\(endpoint) needs TLS: set PLUGBOARD_TLS_CERT, PLUGBOARD_TLS_KEY and PLUGBOARD_TLS_CA")
            }
            let context = try tls.clientContext()
            let handshakeDone = NIOLockedValueBox<EventLoopFuture<Void>?>(nil)
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(2))
                .channelInitializer { channel in
                    Liveness.apply(to: channel).flatMapThrowing {
                        let handshake = channel.eventLoop.makePromise(of: Void.self)
                        handshakeDone.withLockedValue { $0 = handshake.futureResult }
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: nil))
                        try channel.pipeline.syncOperations.addHandler(HandshakeWatcher(done: handshake))
                        let framed = try FramedChannel.install(on: channel, maxFrameSize: maxFrame)
                        made.withLockedValue { $0 = framed }
                    }
                }
                .connect(host: host, port: port)
                .get()
            do {
                guard let done = handshakeDone.withLockedValue({ $0 }) else { throw RemoteConnectError("no TLS handler") }
                try await done.get()
            } catch {
                channel.close(promise: nil)
                throw RemoteConnectError("TLS handshake with \(endpoint) failed: \(error)")
            }
            return try framedOf(made).session(role: role, configuration: configuration, logger: logger)
        }
    }

    private static func framedOf(_ made: NIOLockedValueBox<FramedChannel?>) throws -> FramedChannel {
        guard let framed = made.withLockedValue({ $0 }) else { throw RemoteConnectError("the connection has no frame handlers") }
        return framed
    }
}

/// A connection that could not be made.
public struct RemoteConnectError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}

/// Completes `done` when the TLS handshake completes, fails it on the first error or when
/// the connection closes first. `@unchecked Sendable`: touched only on its event loop.
final class HandshakeWatcher: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let done: EventLoopPromise<Void>
    private var settled = false

    init(done: EventLoopPromise<Void>) {
        self.done = done
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, !settled {
            settled = true
            done.succeed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !settled {
            settled = true
            done.fail(error)
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !settled {
            settled = true
            done.fail(RemoteConnectError("the connection closed before the TLS handshake completed (the other side refused it)"))
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if !settled {
            settled = true
            done.fail(RemoteConnectError("the connection ended"))
        }
    }
}
