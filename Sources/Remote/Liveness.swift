#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import NIOPosix

/// How a TCP connection that goes silent (a pulled cable, a host that died) is noticed:
/// keepalive probes after 1 s of silence, 1 s apart, 3 of them; and data not acknowledged
/// within 4 s ends the connection (TCP_USER_TIMEOUT). Both ends set them, so each notices
/// within about 4 s; a unix socket needs none (its peer's end closes with its process).
public enum Liveness {
    /// Seconds of silence before the first probe.
    public static let idleSeconds: Int = 1
    /// Seconds between probes.
    public static let intervalSeconds: Int = 1
    /// Unanswered probes that end the connection.
    public static let probes: Int = 3
    /// Milliseconds unacknowledged data may wait before the connection ends.
    public static let userTimeoutMilliseconds: Int = 4000

    /// TCP_USER_TIMEOUT (linux/tcp.h), which Swift's Glibc does not export.
    static let tcpUserTimeout: Int32 = 18

    /// The options, for a TCP channel.
    static func apply(to channel: any Channel) -> EventLoopFuture<Void> {
        let tcp = SocketOptionLevel(IPPROTO_TCP)
        return channel.setOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .flatMap { channel.setOption(ChannelOptions.Types.SocketOption(level: tcp, name: SocketOptionName(TCP_KEEPIDLE)), value: idleSeconds) }
            .flatMap { channel.setOption(ChannelOptions.Types.SocketOption(level: tcp, name: SocketOptionName(TCP_KEEPINTVL)), value: intervalSeconds) }
            .flatMap { channel.setOption(ChannelOptions.Types.SocketOption(level: tcp, name: SocketOptionName(TCP_KEEPCNT)), value: probes) }
            .flatMap { channel.setOption(ChannelOptions.Types.SocketOption(level: tcp, name: SocketOptionName(tcpUserTimeout)), value: userTimeoutMilliseconds) }
            .flatMap { channel.setOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1) }
    }
}
