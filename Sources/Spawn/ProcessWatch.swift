#if canImport(Glibc)
import Glibc
#endif
import CSpawn

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
