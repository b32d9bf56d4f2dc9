#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// An exclusive lock on a daemon's state directory, held for the life of the process.
///
/// plugboardd takes it before it touches anything in the directory (runc's root, the SQLite
/// store, bundles): a second daemon pointed at the same directory would otherwise delete
/// the first one's containers as leftovers. The lock is `flock(2)` on `plugboardd.lock` in
/// the directory, so it ends with the process however it dies; the file holds the
/// holder's pid and admin socket, which a refused daemon names in its error.
public final class StateDirectoryLock: Sendable {
    /// The locked directory.
    public let directory: String
    private let descriptor: CInt

    /// The lock file's name inside the state directory.
    public static let fileName = "plugboardd.lock"

    /// Creates `directory` (0700) if needed and locks it, recording `adminSocket` for whoever
    /// is refused next. Throws ``EngineError/Code/stateDirectoryInUse`` naming the holder's
    /// pid and socket when another process holds it.
    public init(directory: String, adminSocket: String) throws {
        self.directory = directory
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw EngineError(.stateDirectory, "cannot create the state directory \(directory): \(error)")
        }
        let path = directory + "/" + Self.fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw EngineError(.stateDirectory, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let why = errno
            let holder = Self.readHolder(fd)
            close(fd)
            if why == EWOULDBLOCK {
                throw EngineError(.stateDirectoryInUse, "another plugboardd (\(holder)) is using the state directory \(directory); stop it or choose another --state-dir")
            }
            throw EngineError(.stateDirectory, "cannot lock \(path): \(String(cString: strerror(why)))")
        }
        let record = Array("pid \(getpid()), admin socket \(adminSocket)\n".utf8)
        _ = ftruncate(fd, 0)
        _ = record.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        descriptor = fd
    }

    deinit {
        close(descriptor)
    }

    /// What the holder wrote: "pid N, admin socket PATH".
    private static func readHolder(_ fd: CInt) -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = pread(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return "pid unknown" }
        return String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
