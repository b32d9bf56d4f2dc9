#if canImport(Glibc)
import Glibc
#endif
import CSpawn
import Logging

/// What to start and how to wire it.
public struct SpawnOptions: Sendable {
    /// A path, or a bare name looked up in `PATH`.
    public var executable: String
    /// Arguments after argv[0].
    public var arguments: [String]
    /// The child's whole environment.
    public var environment: [String: String]
    /// Descriptors to install in the child: child fd → parent fd. Everything else above
    /// fd 2 is closed in the child. Unmapped 0 is /dev/null; unmapped 1 and 2 are inherited.
    public var fileDescriptors: [CInt: CInt]
    /// Put the child in a new process group (so a timeout can kill everything it started,
    /// and a terminal's Ctrl-C reaches only the daemon, which then stops plugins in order).
    public var newProcessGroup: Bool
    /// The child's working directory; the parent's when nil.
    public var workingDirectory: String?

    /// Options to start `executable`. The environment defaults to empty (not the parent's), and the
    /// child goes in a new process group unless `newProcessGroup` is false.
    public init(
        executable: String,
        arguments: [String] = [],
        environment: [String: String] = [:],
        fileDescriptors: [CInt: CInt] = [:],
        newProcessGroup: Bool = true,
        workingDirectory: String? = nil
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.fileDescriptors = fileDescriptors
        self.newProcessGroup = newProcessGroup
        self.workingDirectory = workingDirectory
    }
}

/// Starts child processes with arbitrary descriptors mapped into them.
///
/// Written by hand over `posix_spawn` because neither Foundation's `Process` nor
/// swift-subprocess 1.0 can place descriptors at 3 and 4 in the child, which the plugin
/// protocol needs. `posix_spawn` (vfork-based in glibc) is safe in a multi-threaded
/// process, unlike a hand-rolled fork.
public enum ProcessSpawner {
    /// Starts the child. The parent's descriptors in `fileDescriptors` stay open here:
    /// close your copies of the child's ends after this returns.
    public static func spawn(_ options: SpawnOptions, logger: Logger? = nil) throws -> SpawnedProcess {
        let path = try resolve(options.executable, environment: options.environment)

        var actions = posix_spawn_file_actions_t()
        guard posix_spawn_file_actions_init(&actions) == 0 else {
            throw SystemError("posix_spawn_file_actions_init", errno: errno, path)
        }
        defer { posix_spawn_file_actions_destroy(&actions) }

        // First copy every source above any target, so that installing fd 3 cannot
        // clobber a source that happens to be fd 4 (and dup2 onto an equal number would
        // keep O_CLOEXEC). The copies are close-on-exec and vanish at exec.
        var staged: [(target: CInt, copy: CInt)] = []
        defer { for s in staged { close(s.copy) } }
        let floor = (options.fileDescriptors.keys.max() ?? 2) + 1
        for (target, source) in options.fileDescriptors.sorted(by: { $0.key < $1.key }) {
            let copy = fcntl(source, F_DUPFD_CLOEXEC, max(floor, 10))
            guard copy >= 0 else { throw SystemError("fcntl(F_DUPFD_CLOEXEC)", errno: errno, "fd \(source) for child fd \(target)") }
            staged.append((target, copy))
        }
        if options.fileDescriptors[0] == nil {
            try check(posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0), "addopen /dev/null", path)
        }
        for s in staged {
            try check(posix_spawn_file_actions_adddup2(&actions, s.copy, s.target), "adddup2 \(s.target)", path)
        }
        // Close everything above the mapped descriptors (glibc 2.34+).
        try check(cspawn_file_actions_addclosefrom(&actions, floor), "addclosefrom_np", path)
        if let dir = options.workingDirectory {
            try check(cspawn_file_actions_addchdir(&actions, dir), "addchdir_np", path)
        }

        var attributes = posix_spawnattr_t()
        guard posix_spawnattr_init(&attributes) == 0 else {
            throw SystemError("posix_spawnattr_init", errno: errno, path)
        }
        defer { posix_spawnattr_destroy(&attributes) }
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if options.newProcessGroup {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            try check(posix_spawnattr_setpgroup(&attributes, 0), "setpgroup", path)
        }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        try check(posix_spawnattr_setsigmask(&attributes, &emptyMask), "setsigmask", path)
        // The daemon ignores SIGPIPE (as SwiftNIO does); the child starts with defaults.
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD] { sigaddset(&defaults, sig) }
        try check(posix_spawnattr_setsigdefault(&attributes, &defaults), "setsigdefault", path)
        try check(posix_spawnattr_setflags(&attributes, Int16(flags)), "setflags", path)

        let argv = [path] + options.arguments
        let envp = options.environment.map { "\($0.key)=\($0.value)" }.sorted()
        // On the long-lived spawn thread: see SpawnThread for why.
        let (rc, pid): (Int32, pid_t) = withUnsafePointer(to: &actions) { actionsPtr in
            withUnsafePointer(to: &attributes) { attributesPtr in
                let actionsAddress = UInt(bitPattern: actionsPtr)
                let attributesAddress = UInt(bitPattern: attributesPtr)
                return SpawnThread.shared.run {
                    var pid: pid_t = 0
                    let rc = withCStrings(argv) { argvPtr in
                        withCStrings(envp) { envPtr in
                            posix_spawn(
                                &pid, path,
                                UnsafePointer(bitPattern: actionsAddress),
                                UnsafePointer(bitPattern: attributesAddress),
                                argvPtr, envPtr
                            )
                        } ?? EINVAL
                    } ?? EINVAL
                    return (rc, pid)
                }
            }
        }
        guard rc == 0 else { throw SystemError("posix_spawn", errno: rc, path) }
        logger?.debug("spawned", metadata: ["process.pid": "\(pid)", "process.path": "\(path)"])
        return SpawnedProcess(pid: pid, executable: path)
    }

    private static func check(_ rc: Int32, _ what: String, _ path: String) throws {
        guard rc == 0 else { throw SystemError("posix_spawn_\(what)", errno: rc, path) }
    }

    /// Finds `name` in `PATH` when it has no slash.
    public static func resolve(_ name: String, environment: [String: String]) throws -> String {
        if name.contains("/") {
            guard access(name, X_OK) == 0 else { throw SystemError("access", errno: errno, name) }
            return name
        }
        let searchPath = environment["PATH"] ?? getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        for dir in searchPath.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw SystemError("execvp", errno: ENOENT, "\(name) (not found in PATH)")
    }

    /// A NULL-terminated `char *const[]`, as posix_spawn wants argv and envp.
    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R? {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
        pointers.append(nil)
        defer { for p in pointers { free(p) } }
        return pointers.withUnsafeBufferPointer { buffer in
            buffer.baseAddress.map(body)
        }
    }
}
