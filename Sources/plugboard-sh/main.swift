// plugboard-sh is built in a later issue; until then it says so plainly.
#if canImport(Glibc)
import Glibc
#endif

writeToStandardError("plugboard-sh: not built yet (see the open issues); this build has the Chan foundation only.\n")
exit(2)

/// Writes to fd 2 directly (the C `stderr` global is not concurrency-safe in Swift 6).
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}
