#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import Chan
import Foundation
import Hub
import Logging
import NIOConcurrencyHelpers
import PluginKit
import Routing

/// The admin socket: a unix stream socket speaking the same Chan protocol as plugins.
///
/// The socket is created mode 0600, in a directory made 0700 when we create it; a stale
/// socket left by a dead daemon is replaced and a live one refused. Every connection's
/// peer credentials (SO_PEERCRED) are checked: only root, the daemon's own uid and, if
/// given, members of the admin group are served; others are closed and logged.
public final class AdminServer: Sendable {
    private let listener: SessionListener
    /// Sessions accepted and authorised, waiting for ``serve()`` to take them.
    private let incoming: AsyncStream<Session>
    private let incomingContinuation: AsyncStream<Session>.Continuation
    /// Sessions being served, so that ``close()`` can end them.
    private let open = NIOLockedValueBox<[ObjectIdentifier: Session]>([:])
    private let engine: Engine
    private let builtins: BuiltinLookup
    private let logger: Logger
    /// The socket's path.
    public let path: String

    private init(
        listener: SessionListener, incoming: AsyncStream<Session>, continuation: AsyncStream<Session>.Continuation,
        engine: Engine, builtins: @escaping BuiltinLookup, logger: Logger, path: String
    ) {
        self.listener = listener
        self.incoming = incoming
        self.incomingContinuation = continuation
        self.engine = engine
        self.builtins = builtins
        self.logger = logger
        self.path = path
    }

    /// Looks up a built-in plugin by name (the daemon's table), for `plugin add --builtin`.
    public typealias BuiltinLookup = @Sendable (String) -> (any Plugin)?

    /// Binds `path`; ``serve()`` then answers the engine's admin commands on it.
    public static func start(
        path: String, engine: Engine, adminGroup: gid_t? = nil, builtins: @escaping BuiltinLookup, logger: Logger
    ) async throws -> AdminServer {
        try prepare(path: path)
        let me = getuid()
        let (incoming, continuation) = AsyncStream.makeStream(of: Session.self)
        let listener = try await SessionListener.bind(
            unixSocketPath: path, configuration: .init(name: "plugboardd"), logger: logger,
            authorize: { peer in
                let allowed = peer.uid == 0 || peer.uid == me || (adminGroup.map { $0 == peer.gid || isMember(uid: peer.uid, of: $0) } ?? false)
                if !allowed {
                    logger.warning("admin connection refused", metadata: ["admin.peer": "\(peer)", "admin.socket": "\(path)"])
                }
                return allowed
            },
            onSession: { session in
                if case .terminated = continuation.yield(session) { session.close(reason: "plugboardd is shutting down") }
            }
        )
        guard chmod(path, 0o600) == 0 else {
            try? await listener.close()
            throw EngineError(.adminSocket, "cannot make \(path) mode 0600: \(String(cString: strerror(errno)))")
        }
        logger.info("admin socket ready", metadata: ["admin.socket": "\(path)"])
        return AdminServer(listener: listener, incoming: incoming, continuation: continuation, engine: engine, builtins: builtins, logger: logger, path: path)
    }

    /// Serves every admin session until ``close()``: each session, its channels and its
    /// requests are child tasks of this call, so it returns only when all have ended.
    public func serve() async {
        await withDiscardingTaskGroup { group in
            for await session in incoming {
                let id = ObjectIdentifier(session)
                open.withLockedValue { $0[id] = session }
                group.addTask { [engine, builtins, logger, open] in
                    await Self.serve(session, engine: engine, builtins: builtins, logger: logger)
                    open.withLockedValue { _ = $0.removeValue(forKey: id) }
                }
            }
        }
    }

    /// Stops accepting, ends the sessions being served, and removes the socket file.
    public func close() async {
        try? await listener.close()
        incomingContinuation.finish()
        for session in open.withLockedValue({ Array($0.values) }) { session.close(reason: "plugboardd is shutting down") }
        unlink(path)
    }

    /// Checks the socket path before a daemon starts anything: a live socket is refused.
    public static func prepareForDaemon(path: String) throws {
        try prepare(path: path)
    }

    /// Makes the directory (0700 when we create it) and clears a stale socket; refuses a live one.
    static func prepare(path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        var info = stat()
        if stat(dir, &info) != 0 {
            guard mkdir(dir, 0o700) == 0 || errno == EEXIST else {
                throw EngineError(.adminSocket, "cannot create \(dir): \(String(cString: strerror(errno)))")
            }
        }
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw EngineError(.adminSocket, "\(path) exists and is not a socket; remove it or choose another --admin-socket")
        }
        if socketAcceptsConnections(path) {
            throw EngineError(.adminSocket, "another plugboardd is serving \(path)")
        }
        unlink(path)
    }

    static func socketAcceptsConnections(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { Glibc.close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }

    static func isMember(uid: uid_t, of group: gid_t) -> Bool {
        guard let pw = getpwuid(uid), let gr = getgrgid(group) else { return false }
        let user = String(cString: pw.pointee.pw_name)
        var member = gr.pointee.gr_mem
        while let name = member?.pointee {
            if String(cString: name) == user { return true }
            member = member?.advanced(by: 1)
        }
        return false
    }

    /// One client's session: its channels, and their requests answered concurrently.
    static func serve(_ session: Session, engine: Engine, builtins: @escaping BuiltinLookup, logger: Logger) async {
        await withDiscardingTaskGroup { group in
            do {
                try await session.start()
                while let channel = try await session.accept() {
                    group.addTask {
                        await withDiscardingTaskGroup { requests in
                            while let request = try? await channel.nextRequest() {
                                requests.addTask { await AdminCommands.answer(request, engine: engine, builtins: builtins) }
                            }
                        }
                    }
                }
            } catch {
                logger.debug("admin session ended", metadata: ["admin.error": "\(error)"])
            }
        }
    }
}
