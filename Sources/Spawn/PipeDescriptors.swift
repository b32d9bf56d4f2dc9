#if canImport(Glibc)
import Glibc
#endif
import CSpawn

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
