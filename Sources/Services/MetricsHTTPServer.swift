import Chan
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// `--metrics-listen HOST:PORT`: serves `GET /metrics` over HTTP/1.1 for Prometheus.
/// Anything else is 404; each answer closes the connection.
///
/// Any local user can connect, so connections are bounded: at most ``maximumConnections``
/// at once (past that the server stops accepting, and connections wait in the kernel's
/// backlog until one closes); a connection that has not sent its whole request within
/// ``requestTimeout`` is closed, and so is one that has not taken its answer within
/// ``requestTimeout`` more. When accept fails for want of descriptors the server pauses
/// (``AcceptBackoff``) instead of spinning.
public final class MetricsHTTPServer: Sendable {
    /// Connections served at once.
    public static let maximumConnections = 64
    /// How long a connection may take to send its request, and then to take its answer.
    public static let requestTimeout: TimeAmount = .seconds(5)

    private let channel: any Channel
    /// The scrapes in progress; ``close()`` cancels them.
    private let scrapes: TaskSet

    /// The port it listens on (useful with port 0).
    public var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: any Channel, scrapes: TaskSet) {
        self.channel = channel
        self.scrapes = scrapes
    }

    /// Listens on `host:port` (0 picks a port) and answers `GET /metrics` with `scrape()`.
    public static func start(
        host: String, port: Int, maximumConnections: Int = MetricsHTTPServer.maximumConnections,
        requestTimeout: TimeAmount = MetricsHTTPServer.requestTimeout,
        scrape: @escaping @Sendable () async -> String, logger: Logger
    ) async throws -> MetricsHTTPServer {
        let scrapes = TaskSet()
        let backoff = AcceptBackoff(listener: "\(host):\(port)", logger: logger)
        // One event loop for the listener and its connections: the count of connections
        // is then kept on that loop alone.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let channel = try await ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(ChannelOptions.backlog, value: 128)
            .serverChannelInitializer { server in
                server.eventLoop.makeCompletedFuture {
                    try server.pipeline.syncOperations.addHandler(backoff.handler())
                    try server.pipeline.syncOperations.addHandler(ConnectionCap(maximum: maximumConnections))
                }
            }
            .childChannelInitializer { child in
                child.pipeline.configureHTTPServerPipeline().flatMap {
                    child.pipeline.addHandler(MetricsHandler(scrape: scrape, scrapes: scrapes, timeout: requestTimeout))
                }
            }
            .bind(host: host, port: port)
            .get()
        return MetricsHTTPServer(channel: channel, scrapes: scrapes)
    }

    /// Stops listening and cancels the scrapes in progress.
    public func close() async {
        try? await channel.close()
        scrapes.cancelAll()
    }
}

/// On a server channel: at most `maximum` accepted connections open at once. At the limit
/// it stops asking for accepts (connections wait in the kernel's backlog, costing no
/// descriptor) until one closes; one accepted past it in the same read is closed at once.
/// The server and its children share one event loop, so the count needs no lock.
/// `@unchecked Sendable`: touched only on that loop, as NIO runs handlers.
final class ConnectionCap: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel
    typealias OutboundIn = Never

    let maximum: Int
    private var open = 0
    private var readWanted = false

    init(maximum: Int) {
        self.maximum = max(1, maximum)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = unwrapInboundIn(data)
        guard open < maximum else {
            child.close(promise: nil)
            return
        }
        open += 1
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        child.closeFuture.whenComplete { _ in
            // The child is on this loop too (one loop for all): back on it, synchronously.
            bound.value.0.released(context: bound.value.1)
        }
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        guard open < maximum else {
            readWanted = true
            return
        }
        context.read()
    }

    private func released(context: ChannelHandlerContext) {
        open -= 1
        if readWanted, open < maximum, context.channel.isActive {
            readWanted = false
            context.read()
        }
    }
}

/// One connection's handler. `@unchecked Sendable`: its mutable fields are touched only on
/// its channel's event loop, as NIO runs handlers, which the compiler cannot see; the scrape
/// runs off the loop and hands its answer back through `NIOLoopBound`.
private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let scrape: @Sendable () async -> String
    let scrapes: TaskSet
    let timeout: TimeAmount
    var path = ""
    var method = HTTPMethod.GET
    /// Whether the request has ended; what follows it is ignored (each answer closes).
    var answered = false
    /// Closes the connection if the request (and then the answer) takes too long.
    var deadline: Scheduled<Void>?

    init(scrape: @escaping @Sendable () async -> String, scrapes: TaskSet, timeout: TimeAmount) {
        self.scrape = scrape
        self.scrapes = scrapes
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armDeadline(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    /// From now, the connection has `timeout` to get to the next step, or it is closed.
    func armDeadline(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: timeout) { bound.value.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            method = head.method
        case .body:
            break
        case .end:
            answered = true
            // The answer gets its own `timeout` to be taken.
            armDeadline(context)
            let loop = context.eventLoop
            let boundContext = NIOLoopBound(context, eventLoop: loop)
            let handler = NIOLoopBound(self, eventLoop: loop)
            guard method == .GET, path == "/metrics" else {
                respond(boundContext.value, status: .notFound, body: "only GET /metrics is served here\n", type: "text/plain")
                return
            }
            let scrape = self.scrape
            scrapes.run {
                let text = await scrape()
                loop.execute {
                    handler.value.respond(boundContext.value, status: .ok, body: text, type: "text/plain; version=0.0.4; charset=utf-8")
                }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A malformed request (the HTTP decoder's error): nothing to answer, just close.
        context.close(promise: nil)
    }

    func respond(_ context: ChannelHandlerContext, status: HTTPResponseStatus, body: String, type: String) {
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: String(buffer.readableBytes))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
    }
}
