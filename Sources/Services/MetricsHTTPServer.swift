import Chan
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// `--metrics-listen HOST:PORT`: serves `GET /metrics` over HTTP/1.1 for Prometheus.
/// Anything else is 404; each answer closes the connection.
public final class MetricsHTTPServer: Sendable {
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
    public static func start(host: String, port: Int, scrape: @escaping @Sendable () async -> String, logger: Logger) async throws -> MetricsHTTPServer {
        let scrapes = TaskSet()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.pipeline.configureHTTPServerPipeline().flatMap {
                    child.pipeline.addHandler(MetricsHandler(scrape: scrape, scrapes: scrapes))
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

/// One connection's handler. `@unchecked Sendable`: its mutable fields are touched only on
/// its channel's event loop, as NIO runs handlers, which the compiler cannot see; the scrape
/// runs off the loop and hands its answer back through `NIOLoopBound`.
private final class MetricsHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let scrape: @Sendable () async -> String
    let scrapes: TaskSet
    var path = ""
    var method = HTTPMethod.GET

    init(scrape: @escaping @Sendable () async -> String, scrapes: TaskSet) {
        self.scrape = scrape
        self.scrapes = scrapes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            method = head.method
        case .body:
            break
        case .end:
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
