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

    /// `call` failed with `errno` while doing `context`.
    public init(_ call: String, errno: Int32, _ context: String) {
        self.call = call
        self.errno = errno
        self.context = context
    }

    /// The call, the context, and errno's message and number.
    public var description: String {
        "\(call) failed for \(context): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
