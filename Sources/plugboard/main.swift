// The admin CLI is built in issue #5 (admin socket and the plugboard CLI); until then it
// says so plainly instead of pretending to work.
#if canImport(Glibc)
import Glibc
#endif

writeToStandardError("""
    plugboard: the admin CLI is not built yet (it arrives with the admin socket, issue #5).
    plugboardd itself runs: see `plugboardd --help` and the README.

    """)
exit(2)

/// Writes to fd 2 directly (the C `stderr` global is not concurrency-safe in Swift 6).
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}
