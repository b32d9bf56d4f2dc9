#if canImport(Glibc)
import Glibc
#endif
import Chan
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// Who connected: proven, not claimed. On a unix socket the kernel's peer credentials
/// (SO_PEERCRED); on TCP the client certificate that passed the TLS handshake.
public struct RemotePeer: Sendable, Hashable, CustomStringConvertible {
    /// What proves the peer's identity.
    public enum Identity: Sendable, Hashable {
        /// A process on this host, as the kernel saw it connect.
        case credentials(PeerCredentials)
        /// A TLS client whose certificate chains to the CA bundle; its subject's common name.
        case certificate(commonName: String?)
    }

    /// What proves who it is.
    public var identity: Identity
    /// Where it connected from: `pid P, uid U, gid G` on a unix socket, `HOST:PORT` on TCP.
    public var address: String
    /// The listener it came through.
    public var listener: RemoteEndpoint

    /// `ADDRESS via LISTENER` (and the certificate's CN on TCP).
    public var description: String {
        switch identity {
        case .credentials: return "\(listener) (\(address))"
        case .certificate(let cn): return "\(address) via \(listener) (certificate CN=\(cn ?? "none"))"
        }
    }
}

/// One connection that passed the transport's checks (TLS, peer credentials), before any
/// frame: make its session and start it.
public struct RemoteConnection: Sendable {
    /// Who is at the other end.
    public let peer: RemotePeer
    let framed: FramedChannel

    /// The daemon's session over it, not started. For a plugin the daemon is the initiator,
    /// as on fds 3/4 (the plugin is the acceptor whichever side connected); for an admin
    /// client it is the acceptor, as on the admin socket.
    public func session(role: Session.Role = .initiator, configuration: Session.Configuration, logger: Logger) -> Session {
        framed.session(role: role, configuration: configuration, logger: logger)
    }

    /// Closes the connection without a session (a refusal before any frame).
    public func close() {
        framed.channel.close(promise: nil)
    }
}

/// Listens where remote plugins (or admin clients) connect: a unix socket, whose peers are
/// known by their credentials, or TCP with mutual TLS, whose peers are known by their
/// certificates. A TCP endpoint without TLS files is refused: nothing connects over TCP
/// without a certificate.
public final class RemoteListener: Sendable {
    /// Where it listens (with the port the kernel picked for port 0).
    public let endpoint: RemoteEndpoint
    /// Each connection, once its TLS handshake (TCP) is done or it is accepted (unix).
    public let connections: AsyncStream<RemoteConnection>
    private let channel: any Channel
    private let continuation: AsyncStream<RemoteConnection>.Continuation

    private init(endpoint: RemoteEndpoint, channel: any Channel, connections: AsyncStream<RemoteConnection>, continuation: AsyncStream<RemoteConnection>.Continuation) {
        self.endpoint = endpoint
        self.channel = channel
        self.connections = connections
        self.continuation = continuation
    }

    /// Binds `endpoint`. A unix socket path that exists is taken over only when nothing
    /// answers on it; the socket is made connectable by every user (0666): who may do what
    /// is decided by the peer's credentials, per plugin name.
    public static func bind(
        _ endpoint: RemoteEndpoint, tls: TLSFiles?, maxFrameSize: Int, logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> RemoteListener {
        let sslContext: NIOSSLContext?
        switch endpoint {
        case .unix(let path):
            sslContext = nil
            try await takeOverStaleSocket(path, group: group)
        case .tcp:
            guard let tls else {
                throw TLSSetupError("\(endpoint) needs TLS: give a certificate, its key and the CA bundle that signs the plugins' certificates")
            }
            sslContext = try tls.serverContext()
        }
        let (stream, continuation) = AsyncStream.makeStream(of: RemoteConnection.self)
        let backoff = AcceptBackoff(listener: "\(endpoint)", logger: logger)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { server in
                server.eventLoop.makeCompletedFuture { try server.pipeline.syncOperations.addHandler(backoff.handler()) }
            }
            .childChannelInitializer { child in
                let liveness: EventLoopFuture<Void> = sslContext == nil ? child.eventLoop.makeSucceededVoidFuture() : Liveness.apply(to: child)
                return liveness.flatMapThrowing {
                    let address = child.remoteAddress.map(Self.describe) ?? "unknown"
                    let gate = ConnectionGate(tls: sslContext != nil, address: address, listener: endpoint, logger: logger)
                    var ssl: NIOSSLServerHandler?
                    if let sslContext {
                        // The verification BoringSSL did, kept; a failure is explained (expired,
                        // another CA) for the log, which the handshake error alone does not say.
                        let handler = try NIOSSLServerHandler.verifying(context: sslContext) { result, certificate in
                            if result == .failed, gate.certificateProblem == nil {
                                gate.certificateProblem = ConnectionGate.problem(with: certificate)
                            }
                            return result
                        }
                        try child.pipeline.syncOperations.addHandler(handler)
                        ssl = handler
                    }
                    try child.pipeline.syncOperations.addHandler(gate)
                    let framed = try FramedChannel.install(on: child, maxFrameSize: maxFrameSize)
                    gate.onReady = { [ssl] in
                        if let ssl {
                            let cn = ssl.peerCertificate?.subjectCommonName
                            continuation.yield(RemoteConnection(peer: RemotePeer(identity: .certificate(commonName: cn), address: address, listener: endpoint), framed: framed))
                            return
                        }
                        guard let provider = child as? any SocketOptionProvider else {
                            child.close(promise: nil)
                            return
                        }
                        let raw: EventLoopFuture<RawCredentials> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
                        raw.whenComplete { result in
                            switch result {
                            case .success(let raw):
                                let credentials = PeerCredentials(processID: raw.pid, userID: raw.uid, groupID: raw.gid)
                                continuation.yield(RemoteConnection(
                                    peer: RemotePeer(identity: .credentials(credentials), address: "\(credentials)", listener: endpoint), framed: framed
                                ))
                            case .failure(let error):
                                logger.warning("cannot read a connection's peer credentials; closed", metadata: ["remote.listener": "\(endpoint)", "remote.error": "\(error)"])
                                child.close(promise: nil)
                            }
                        }
                    }
                }
            }
        let channel: any Channel
        switch endpoint {
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
            chmod(path, 0o666)
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        }
        var bound = endpoint
        if case .tcp(let host, _) = endpoint, let port = channel.localAddress?.port { bound = .tcp(host: host, port: port) }
        logger.info("listening for remote connections", metadata: ["remote.listener": "\(bound)", "remote.tls": "\(sslContext != nil)"])
        return RemoteListener(endpoint: bound, channel: channel, connections: stream, continuation: continuation)
    }

    /// Stops accepting and ends ``connections``; connections already made go on.
    public func close() async {
        try? await channel.close()
        continuation.finish()
        if case .unix(let path) = endpoint { unlink(path) }
    }

    static func describe(_ address: SocketAddress) -> String {
        switch address {
        case .v4, .v6:
            let ip = address.ipAddress ?? "?"
            let port = address.port.map(String.init) ?? "?"
            return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
        case .unixDomainSocket: return "unix"
        }
    }

    /// Removes a socket file nobody answers on (a daemon that was killed left it); refuses
    /// when something does answer.
    private static func takeOverStaleSocket(_ path: String, group: any EventLoopGroup) async throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw TLSSetupError("\(path) exists and is not a socket; plugboardd will not replace it")
        }
        if let live = try? await ClientBootstrap(group: group).connect(unixDomainSocketPath: path).get() {
            try? await live.close()
            throw TLSSetupError("something already listens on \(path) (another plugboardd?)")
        }
        unlink(path)
    }
}

/// glibc's `struct ucred`, as Chan's listener reads it (three 32-bit fields).
struct RawCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// Between the transport (TLS) and the frames: says when the connection is ready (accepted,
/// or its TLS handshake done) and, before that, logs and closes on any error (a refused
/// certificate), so that nothing of a session is made for a peer that failed the handshake.
/// `@unchecked Sendable`: touched only on the channel's event loop.
final class ConnectionGate: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let tls: Bool
    let address: String
    let listener: RemoteEndpoint
    let logger: Logger
    var onReady: (() -> Void)?
    /// Why the client's certificate failed verification, when it did.
    var certificateProblem: String?
    private var ready = false

    init(tls: Bool, address: String, listener: RemoteEndpoint, logger: Logger) {
        self.tls = tls
        self.address = address
        self.listener = listener
        self.logger = logger
    }

    private func becomeReady() {
        guard !ready else { return }
        ready = true
        handshakeTimer?.cancel()
        handshakeTimer = nil
        let action = onReady
        onReady = nil
        action?()
    }

    /// What is wrong with a certificate that failed verification: expired, not yet valid,
    /// or not signed by the CA bundle.
    static func problem(with certificate: NIOSSLCertificate) -> String {
        let cn = certificate.subjectCommonName.map { "CN=\($0)" } ?? "without a CN"
        let now = time(nil)
        if certificate.notValidAfter < now { return "the client certificate \(cn) has expired (not valid after \(utc(certificate.notValidAfter)))" }
        if certificate.notValidBefore > now { return "the client certificate \(cn) is not valid yet (not before \(utc(certificate.notValidBefore)))" }
        let issuer = certificate.issuerName.last { $0.type == .commonName }.map { "CN=\($0.value)" } ?? "unnamed"
        return "the client certificate \(cn) is not signed by a CA in the CA bundle (its issuer: \(issuer))"
    }

    static func utc(_ t: time_t) -> String {
        var t = t
        var parts = tm()
        gmtime_r(&t, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// How long a TLS handshake may take before the connection is closed.
    static let handshakeTimeout: TimeAmount = .seconds(10)
    private var handshakeTimer: Scheduled<Void>?

    func channelActive(context: ChannelHandlerContext) {
        if !tls {
            becomeReady()
        } else {
            // A peer that never finishes its handshake does not keep the socket.
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            handshakeTimer = context.eventLoop.scheduleTask(in: Self.handshakeTimeout) {
                let (gate, context) = bound.value
                guard !gate.ready else { return }
                gate.logger.warning("remote connection closed: no TLS handshake within 10 s", metadata: ["remote.peer": "\(gate.address)", "remote.listener": "\(gate.listener)"])
                gate.onReady = nil
                context.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        handshakeTimer = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event { becomeReady() }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard ready else {
            var metadata: Logger.Metadata = ["remote.peer": "\(address)", "remote.listener": "\(listener)", "remote.error": "\(error)"]
            if let certificateProblem { metadata["remote.certificate"] = "\(certificateProblem)" }
            logger.warning("remote connection refused during the TLS handshake: \(certificateProblem ?? "\(error)")", metadata: metadata)
            onReady = nil
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }
}

/// BoringSSL's own verification with a look at its result per certificate, to say *why* a
/// client certificate failed (expired, another CA) — the handshake error alone says only
/// CERTIFICATE_VERIFY_FAILED. swift-nio-ssl deprecates this initializer in favour of a
/// callback that replaces the verification, which is not what is wanted here; it is reached
/// through this protocol so that the one use is explicit.
protocol ObservingVerification {
    init(context: NIOSSLContext, verificationCallback: NIOSSLVerificationCallback?) throws
}

extension NIOSSLServerHandler: ObservingVerification {}

extension ObservingVerification {
    static func verifying(context: NIOSSLContext, _ observe: @escaping NIOSSLVerificationCallback) throws -> Self {
        try Self(context: context, verificationCallback: observe)
    }
}
