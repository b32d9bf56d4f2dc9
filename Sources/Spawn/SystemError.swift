#if canImport(Glibc)
import Glibc
#endif
import CSpawn

/// A failed system call: which call, on what, and errno.
public struct SystemError: Error, Hashable, CustomStringConvertible {
    /// The call that failed (`posix_spawn`, `pipe2`, …).
    public var call: String
    /// errno.
    public var errno: Int32
    /// What it was doing, for a person.
    public var context: String

    public init(_ call: String, errno: Int32, _ context: String) {
        self.call = call
        self.errno = errno
        self.context = context
    }

    public var description: String {
        "\(call) failed for \(context): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// A pipe made with O_CLOEXEC, so neither end leaks into unrelated children.
public struct PipeDescriptors: Sendable {
    /// The read end.
    public let readEnd: CInt
    /// The write end.
    public let writeEnd: CInt

    /// Makes a new pipe.
    public static func make() throws -> PipeDescriptors {
        var fds: [CInt] = [-1, -1]
        guard cspawn_pipe_cloexec(&fds) == 0 else {
            throw SystemError("pipe2", errno: errno, "a new pipe")
        }
        return PipeDescriptors(readEnd: fds[0], writeEnd: fds[1])
    }
}

/// Waiting for processes that are not our children.
public enum ProcessWatch {
    /// Blocks until process `pid` has exited (or is a zombie), at most `timeout`.
    /// Returns true when it is gone. Uses a pidfd, so it waits for the event instead of polling.
    public static func waitUntilGone(_ pid: pid_t, timeout: Duration) -> Bool {
        let fd = cspawn_pidfd_open(pid)
        if fd < 0 { return errno == ESRCH }
        defer { close(fd) }
        let (seconds, attos) = timeout.components
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let rc = poll(&entry, 1, Int32(seconds * 1000 + attos / 1_000_000_000_000_000))
        return rc > 0
    }

    /// The direct children of `pid`, from /proc.
    public static func children(of pid: pid_t) -> [pid_t] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var result: [pid_t] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let child = pid_t(name), let stat = try? readSmallFile("/proc/\(child)/stat") else { continue }
            // Fields after the ")" that closes the command name: state, ppid, ...
            guard let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, pid_t(fields[1]) == pid { result.append(child) }
        }
        return result
    }

    static func readSmallFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SystemError("open", errno: errno, path) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buffer, buffer.count)
        guard n >= 0 else { throw SystemError("read", errno: errno, path) }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }
}
