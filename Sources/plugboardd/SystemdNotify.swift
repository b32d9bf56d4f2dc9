#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The sd_notify protocol: tells systemd (a `Type=notify` unit) that plugboardd is ready,
/// reloading or stopping.
///
/// The protocol is one datagram per message, newline-separated `KEY=VALUE` lines, sent to
/// the unix socket named by `$NOTIFY_SOCKET`: a path, or an abstract socket when the name
/// starts with `@` (the `@` stands for the leading NUL byte). It is written here by hand:
/// libsystemd's `sd_notify` is a C library we would have to link (libsystemd-dev) for one
/// `sendto`, and no Swift package in the set this project resolves from implements it.
///
/// The socket is taken out of the environment once, at the start of `main`
/// (``takeSocketFromEnvironment()``), so that plugins, which inherit plugboardd's
/// environment, do not see it and cannot speak for the daemon. Without `NOTIFY_SOCKET`
/// (not under systemd) every ``send(_:)`` does nothing.
enum SystemdNotify {
    private static let socketName = Mutex<String?>(nil)

    /// Reads `$NOTIFY_SOCKET` and removes it from the environment. Call it once, first
    /// thing in `main`, before any other thread exists (`unsetenv` is not thread-safe).
    static func takeSocketFromEnvironment() {
        guard let raw = getenv("NOTIFY_SOCKET") else { return }
        let name = String(cString: raw)
        unsetenv("NOTIFY_SOCKET")
        guard !name.isEmpty else { return }
        socketName.withLock { $0 = name }
    }

    /// Whether a notification socket was given (plugboardd runs under systemd).
    static var isEnabled: Bool { socketName.withLock { $0 } != nil }

    /// Sends `state` (for example `READY=1`, or several `KEY=VALUE` lines) to systemd.
    /// Returns false when there is no socket or the datagram could not be sent; a daemon
    /// goes on either way (systemd times the unit out if it never hears READY=1).
    @discardableResult
    static func send(_ state: String) -> Bool {
        guard let name = socketName.withLock({ $0 }) else { return false }
        return sendDatagram(state, to: name)
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that systemd asks a reloading service to give
    /// (sd_notify(3)); send `READY=1` when the reload is done.
    @discardableResult
    static func reloading() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let usec = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
        return send("RELOADING=1\nMONOTONIC_USEC=\(usec)")
    }

    /// One datagram with `message` to the unix socket `name` (a path, or `@abstract`).
    static func sendDatagram(_ message: String, to name: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(name.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path needs room for its terminating NUL; an abstract name does not have one.
        guard !path.isEmpty, path.count < capacity || (path[0] == 0 && path.count <= capacity) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2) + socklen_t(path.count)
            + (path[0] == 0 ? 0 : 1)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(message.utf8)
        let sent = bytes.withUnsafeBytes { buffer in
            withUnsafePointer(to: &address) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL), $0, length)
                }
            }
        }
        return sent == bytes.count
    }
}
