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
