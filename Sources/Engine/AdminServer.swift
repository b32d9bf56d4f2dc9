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
/// socket left by a dead daemon is replaced and a live one refused. With an admin group
/// the socket is the group's, mode 0660, and so is its directory, mode 0750, when the
/// directory is the socket's own (see ``socketDirectoryIsOurs(_:socketName:)``): a member
/// must be able to search the directory and write the socket to connect at all. Every
/// connection's peer credentials (SO_PEERCRED) are checked: only root, the daemon's own
/// uid and, if given, members of the admin group are served; others are closed and logged.
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
        do {
            try setOwnership(path: path, adminGroup: adminGroup, logger: logger)
        } catch {
            try? await listener.close()
            throw error
        }
        logger.info("admin socket ready", metadata: ["admin.socket": "\(path)", "admin.group": "\(adminGroup.map { "\($0)" } ?? "-")"])
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

    /// The socket's and its directory's group and modes. Without an admin group: the
    /// socket 0600, and the directory, when it is ours, 0700 and the daemon's group (a group
    /// given to an earlier run is taken back). With group G: the socket G and 0660, and the
    /// directory, when it is ours, G and 0750 — members may search it and list it, not
    /// create, rename or remove anything in it (0770 would let them put their own socket
    /// in its place). A directory that is not ours (shared, like /tmp or /run) is left as it
    /// is, with a warning when it keeps the group out.
    static func setOwnership(path: String, adminGroup: gid_t?, logger: Logger) throws {
        func fail(_ what: String) -> EngineError {
            EngineError(.adminSocket, "cannot \(what): \(String(cString: strerror(errno)))")
        }
        let socketGroup = adminGroup ?? getegid()
        if let adminGroup, chown(path, geteuid(), adminGroup) != 0 { throw fail("give \(path) group \(adminGroup)") }
        let socketMode: mode_t = adminGroup == nil ? 0o600 : 0o660
        guard chmod(path, socketMode) == 0 else { throw fail("make \(path) mode \(String(socketMode, radix: 8))") }
        let directory = (path as NSString).deletingLastPathComponent
        let socketName = (path as NSString).lastPathComponent
        if socketDirectoryIsOurs(directory, socketName: socketName) {
            guard chown(directory, geteuid(), socketGroup) == 0 else { throw fail("give \(directory) group \(socketGroup)") }
            let mode: mode_t = adminGroup == nil ? 0o700 : 0o750
            guard chmod(directory, mode) == 0 else { throw fail("make \(directory) mode \(String(mode, radix: 8))") }
        } else if let adminGroup {
            var info = stat()
            let searchable = stat(directory, &info) == 0
                && (info.st_mode & S_IXOTH != 0 || (info.st_gid == adminGroup && info.st_mode & S_IXGRP != 0))
            if !searchable {
                logger.warning("the admin group cannot reach the socket: the group may not search its directory, which is not the socket's own for plugboardd to change (it holds other files, or is not plugboardd's)", metadata: [
                    "admin.socket": "\(path)", "admin.directory": "\(directory)", "admin.group": "\(adminGroup)",
                ])
            }
        }
    }

    /// Whether `directory` is the socket's own, whose group and mode plugboardd may set: a
    /// real directory (not a symlink) owned by this uid, not sticky, that holds nothing but
    /// the socket (the default /run/plugboard, or one systemd's RuntimeDirectory= made).
    static func socketDirectoryIsOurs(_ directory: String, socketName: String) -> Bool {
        var info = stat()
        guard lstat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid(), info.st_mode & S_ISVTX == 0 else {
            return false
        }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return false }
        return entries.allSatisfy { $0 == socketName }
    }

    /// Whether user `uid` is in `group`: its primary group or a supplementary one, from the
    /// group database (getgrouplist; reentrant, unlike getpwuid/getgrgid, and this runs on
    /// event loop threads).
    static func isMember(uid: uid_t, of group: gid_t) -> Bool {
        var buffer = [CChar](repeating: 0, count: 16_384)
        // The record's strings point into the buffer: everything happens inside its scope.
        return buffer.withUnsafeMutableBufferPointer { strings in
            var record = passwd()
            var result: UnsafeMutablePointer<passwd>?
            guard let base = strings.baseAddress, getpwuid_r(uid, &record, base, strings.count, &result) == 0, result != nil,
                  let name = record.pw_name else { return false }
            if record.pw_gid == group { return true }
            var count: Int32 = 64
            var groups = [gid_t](repeating: 0, count: Int(count))
            while getgrouplist(name, record.pw_gid, &groups, &count) == -1 {
                guard count > Int32(groups.count), count <= 65_536 else { return false }
                groups = [gid_t](repeating: 0, count: Int(count))
            }
            return groups.prefix(Int(count)).contains(group)
        }
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
