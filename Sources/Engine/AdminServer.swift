#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import Chan
import Foundation
import Hub
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PluginKit
import Routing

/// The admin socket: a unix stream socket speaking the same Chan protocol as plugins.
///
/// The socket is created mode 0600, in a directory made 0700 when we create it; a stale
/// socket left by a dead daemon is replaced and a live one refused. With an admin group
/// the socket is the group's, mode 0660, and so is its directory, mode 0750, when the
/// directory is the socket's own (see ``socketDirectoryIsOurs(_:socketName:)``): a member
/// must be able to search the directory and write the socket to connect at all. Every
/// connection's peer credentials (SO_PEERCRED) are checked before anything is made for it:
/// only root, the daemon's own uid and, if given, members of the admin group are served;
/// others are closed, and logged at most once per ``Limits/refusalLogInterval`` with a count.
///
/// Sessions are bounded (``Limits``): in all, per uid, and with slots only root and the
/// daemon's own uid can take, so that other users cannot lock them out. A session with no
/// channel open for ``Limits/idleTimeout`` is closed.
public final class AdminServer: Sendable {
    /// How many admin sessions may be open, and for how long one may sit idle.
    public struct Limits: Sendable {
        /// Sessions open at once, all peers together.
        public var maximumSessions: Int
        /// Sessions open at once per uid, for uids other than root and the daemon's own
        /// (members of the admin group).
        public var maximumSessionsPerUID: Int
        /// Slots that only root and the daemon's own uid can take: other uids together
        /// hold at most `maximumSessions - reservedSessions`.
        public var reservedSessions: Int
        /// A session with no channel open for this long is closed.
        public var idleTimeout: Duration
        /// At most one log line about refused connections per this long.
        public var refusalLogInterval: Duration

        /// The defaults: 256 sessions, 64 per uid, 32 reserved, 60 s idle, a line per 10 s.
        public init(
            maximumSessions: Int = 256, maximumSessionsPerUID: Int = 64, reservedSessions: Int = 32,
            idleTimeout: Duration = .seconds(60), refusalLogInterval: Duration = .seconds(10)
        ) {
            self.maximumSessions = maximumSessions
            self.maximumSessionsPerUID = maximumSessionsPerUID
            self.reservedSessions = reservedSessions
            self.idleTimeout = idleTimeout
            self.refusalLogInterval = refusalLogInterval
        }
    }

    private let listener: SessionListener
    /// Sessions accepted and authorised, waiting for ``serve()`` to take them.
    private let incoming: AsyncStream<Session>
    private let incomingContinuation: AsyncStream<Session>.Continuation
    /// Sessions being served, so that ``close()`` can end them, and since when each has had
    /// no channel open (nil: it has one).
    private let open = NIOLockedValueBox<[ObjectIdentifier: (session: Session, idleSince: ContinuousClock.Instant?)]>([:])
    private let admissions: Admissions
    private let refusals: RefusalLog
    /// Every few seconds: closes idle sessions and logs the refusals counted since the last line.
    private let sweeper: RepeatedTask
    private let engine: Engine
    private let builtins: BuiltinLookup
    private let logger: Logger
    /// The socket's path.
    public let path: String

    private init(
        listener: SessionListener, incoming: AsyncStream<Session>, continuation: AsyncStream<Session>.Continuation,
        engine: Engine, builtins: @escaping BuiltinLookup, logger: Logger, path: String,
        admissions: Admissions, refusals: RefusalLog, limits: Limits
    ) {
        self.admissions = admissions
        self.refusals = refusals
        let open = self.open
        let every = min(limits.idleTimeout / 4, limits.refusalLogInterval)
        sweeper = MultiThreadedEventLoopGroup.singleton.next().scheduleRepeatedTask(initialDelay: every.timeAmount, delay: every.timeAmount) { _ in
            refusals.flush()
            Self.closeIdle(open, after: limits.idleTimeout)
        }
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
        path: String, engine: Engine, adminGroup: gid_t? = nil, limits: Limits = Limits(), builtins: @escaping BuiltinLookup, logger: Logger
    ) async throws -> AdminServer {
        try prepare(path: path)
        let me = getuid()
        let (incoming, continuation) = AsyncStream.makeStream(of: Session.self)
        let admissions = Admissions(limits: limits, privileged: { $0 == 0 || $0 == me })
        let refusals = RefusalLog(interval: limits.refusalLogInterval, socket: path, logger: logger)
        let membership = GroupMembership()
        let listener = try await SessionListener.bind(
            unixSocketPath: path, configuration: .init(name: "plugboardd"), logger: logger,
            authorize: { peer in
                let allowed = peer.uid == 0 || peer.uid == me || (adminGroup.map { $0 == peer.gid || membership.isMember(uid: peer.uid, of: $0) } ?? false)
                guard allowed else {
                    refusals.refused(peer, .notAllowed)
                    return false
                }
                if let full = admissions.admit(peer.uid) {
                    refusals.refused(peer, full)
                    return false
                }
                return true
            },
            released: { peer in admissions.release(peer.uid) },
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
        logger.info("admin socket ready", metadata: [
            "admin.socket": "\(path)", "admin.group": "\(adminGroup.map { "\($0)" } ?? "-")", "admin.max_sessions": "\(limits.maximumSessions)",
            "admin.max_sessions_per_uid": "\(limits.maximumSessionsPerUID)", "admin.idle_timeout": "\(limits.idleTimeout)",
        ])
        return AdminServer(
            listener: listener, incoming: incoming, continuation: continuation, engine: engine, builtins: builtins, logger: logger, path: path,
            admissions: admissions, refusals: refusals, limits: limits
        )
    }

    /// How many sessions each uid has open; who may open another.
    final class Admissions: Sendable {
        let limits: Limits
        let privileged: @Sendable (uid_t) -> Bool
        private let counts = NIOLockedValueBox<(total: Int, unprivileged: Int, byUID: [uid_t: Int])>((0, 0, [:]))

        init(limits: Limits, privileged: @escaping @Sendable (uid_t) -> Bool) {
            self.limits = limits
            self.privileged = privileged
        }

        /// Counts a session for `uid`, or says which limit it would pass.
        func admit(_ uid: uid_t) -> RefusalLog.Reason? {
            let isPrivileged = privileged(uid)
            return counts.withLockedValue { c in
                if c.total >= limits.maximumSessions { return .full(limits.maximumSessions) }
                if !isPrivileged {
                    if c.byUID[uid, default: 0] >= limits.maximumSessionsPerUID { return .perUID(limits.maximumSessionsPerUID) }
                    let shared = limits.maximumSessions - limits.reservedSessions
                    if c.unprivileged >= shared { return .unprivilegedFull(shared) }
                    c.unprivileged += 1
                }
                c.total += 1
                c.byUID[uid, default: 0] += 1
                return nil
            }
        }

        /// A session of `uid` ended.
        func release(_ uid: uid_t) {
            let isPrivileged = privileged(uid)
            counts.withLockedValue { c in
                c.total -= 1
                if !isPrivileged { c.unprivileged -= 1 }
                let left = c.byUID[uid, default: 1] - 1
                c.byUID[uid] = left > 0 ? left : nil
            }
        }

        /// Sessions open now.
        var total: Int { counts.withLockedValue { $0.total } }
    }

    /// Refused connections, logged at most one line per interval: the first refusal after a
    /// quiet interval at once (with the peer), the rest as a count per uid in the next line.
    final class RefusalLog: Sendable {
        /// Why a connection was refused.
        enum Reason: Hashable, Sendable, CustomStringConvertible {
            case notAllowed
            case full(Int)
            case perUID(Int)
            case unprivilegedFull(Int)

            var description: String {
                switch self {
                case .notAllowed: return "not allowed (only root, the daemon's user and --admin-group)"
                case .full(let n): return "all \(n) admin sessions are taken"
                case .perUID(let n): return "the uid has \(n) admin sessions open, the most one uid other than root may have"
                case .unprivilegedFull(let n): return "uids other than root hold \(n) admin sessions, the most they may hold together (the rest are kept for root)"
                }
            }
        }

        struct Key: Hashable {
            var uid: uid_t
            var reason: Reason
        }

        let interval: Duration
        let socket: String
        let logger: Logger
        private let state = NIOLockedValueBox<(pending: [Key: Int], last: ContinuousClock.Instant?)>(([:], nil))

        init(interval: Duration, socket: String, logger: Logger) {
            self.interval = interval
            self.socket = socket
            self.logger = logger
        }

        /// Counts a refusal; writes a line now if none was written in the last interval.
        func refused(_ peer: PeerCredentials, _ reason: Reason) {
            let now = ContinuousClock.now
            let earlier: [Key: Int]? = state.withLockedValue { s in
                if let last = s.last, now - last < interval {
                    s.pending[Key(uid: peer.uid, reason: reason), default: 0] += 1
                    return nil
                }
                defer { s.pending = [:]; s.last = now }
                return s.pending
            }
            guard let earlier else { return }
            var metadata: Logger.Metadata = ["admin.peer": "\(peer)", "admin.socket": "\(socket)", "admin.reason": "\(reason)"]
            if !earlier.isEmpty { metadata["admin.refused_before"] = "\(Self.summary(earlier))" }
            logger.warning("admin connection refused", metadata: metadata)
        }

        /// Writes the refusals counted since the last line, if there are any and the
        /// interval has passed; `force` writes them regardless (at shutdown).
        func flush(force: Bool = false) {
            let now = ContinuousClock.now
            let due: (counts: [Key: Int], since: Duration)? = state.withLockedValue { s in
                guard !s.pending.isEmpty else { return nil }
                let since = s.last.map { now - $0 } ?? .zero
                if !force, s.last != nil, since < interval { return nil }
                defer { s.pending = [:]; s.last = now }
                return (s.pending, since)
            }
            guard let due else { return }
            let total = due.counts.values.reduce(0, +)
            let seconds = Int((Double(due.since.components.seconds) + Double(due.since.components.attoseconds) / 1e18).rounded())
            logger.warning("refused \(total) admin connections in the last \(seconds) s: \(Self.summary(due.counts))", metadata: ["admin.socket": "\(socket)"])
        }

        /// "uid 1000: 12000 (not allowed ...); uid 1001: 3 (...)", largest first, at most 8.
        static func summary(_ counts: [Key: Int]) -> String {
            let sorted = counts.sorted { $0.value > $1.value }
            var parts = sorted.prefix(8).map { "uid \($0.key.uid): \($0.value) (\($0.key.reason))" }
            if sorted.count > 8 { parts.append("and \(sorted.count - 8) more") }
            return parts.joined(separator: "; ")
        }
    }

    /// Closes the sessions that have had no channel open for `timeout`.
    static func closeIdle(_ open: NIOLockedValueBox<[ObjectIdentifier: (session: Session, idleSince: ContinuousClock.Instant?)]>, after timeout: Duration) {
        let now = ContinuousClock.now
        let idle: [Session] = open.withLockedValue { sessions in
            var idle: [Session] = []
            for (id, entry) in sessions {
                guard entry.session.statistics.openChannels == 0 else {
                    sessions[id]?.idleSince = nil
                    continue
                }
                guard let since = entry.idleSince else {
                    sessions[id]?.idleSince = now
                    continue
                }
                if now - since >= timeout { idle.append(entry.session) }
            }
            return idle
        }
        for session in idle { session.close(reason: "idle: no channel open for \(timeout)") }
    }

    /// Sessions open now (authorised, not yet ended).
    public var sessionCount: Int { admissions.total }

    /// Serves every admin session until ``close()``: each session, its channels and its
    /// requests are child tasks of this call, so it returns only when all have ended.
    public func serve() async {
        await withDiscardingTaskGroup { group in
            for await session in incoming {
                let id = ObjectIdentifier(session)
                open.withLockedValue { $0[id] = (session, nil) }
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
        sweeper.cancel()
        refusals.flush(force: true)
        incomingContinuation.finish()
        for entry in open.withLockedValue({ Array($0.values) }) { entry.session.close(reason: "plugboardd is shutting down") }
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

    /// ``isMember(uid:of:)``, remembered for 10 s per uid: a user connecting in a loop costs
    /// one lookup of the user and group databases per 10 s, not one per connection.
    final class GroupMembership: Sendable {
        static let ttl: Duration = .seconds(10)
        private let cache = NIOLockedValueBox<[uid_t: (member: Bool, until: ContinuousClock.Instant)]>([:])

        func isMember(uid: uid_t, of group: gid_t) -> Bool {
            let now = ContinuousClock.now
            if let known = cache.withLockedValue({ $0[uid] }), known.until > now { return known.member }
            let member = AdminServer.isMember(uid: uid, of: group)
            cache.withLockedValue { c in
                if c.count >= 1024 { c = c.filter { $0.value.until > now } }
                if c.count < 1024 { c[uid] = (member, now + Self.ttl) }
            }
            return member
        }
    }

    /// One client's session: its channels, and their requests answered concurrently.
    ///
    /// The session's tasks run on its event loop (the thread that reads its socket), so a
    /// request reaches its task without waking another thread. A call of a job served by
    /// another process stays there too: it only sends, waits and answers, and its reply
    /// resumes it on this loop. Every other command (and a call of an in-process job, whose
    /// handler may block) runs on the global pool, off the loop that other sessions share.
    static func serve(_ session: Session, engine: Engine, builtins: @escaping BuiltinLookup, logger: Logger) async {
        await withTaskExecutorPreference(session.taskExecutor) {
            await withDiscardingTaskGroup { group in
                do {
                    try await session.start()
                    while let channel = try await session.accept() {
                        group.addTask(executorPreference: session.taskExecutor) {
                            await withDiscardingTaskGroup { requests in
                                while let request = try? await channel.nextRequest() {
                                    let onLoop = AdminCommands.forwardsToAnotherProcess(request.body, engine: engine)
                                    requests.addTask(executorPreference: onLoop ? session.taskExecutor : globalConcurrentExecutor) {
                                        await AdminCommands.answer(request, engine: engine, builtins: builtins)
                                    }
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
}
