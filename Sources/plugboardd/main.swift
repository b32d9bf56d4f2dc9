// plugboardd is built in issue #4 (built-in and subprocess plugins, supervised).
// Until then it says so plainly instead of pretending to run.
#if canImport(Glibc)
import Glibc
#endif

let message = """
    plugboardd: the daemon is not built yet.
    This build has the foundation (Chan: msgpack values, frames and sessions over fds 3/4,
    unix sockets and in-memory pairs). The daemon, its plugins and supervision come with issue #4.
    Try `make test` or `make bench` meanwhile.

    """
writeToStandardError(message)
exit(2)

/// Writes to fd 2 directly (the C `stderr` global is not concurrency-safe in Swift 6).
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}
