// The shell adapter is built in issue #7 (shell-script plugins); until then it says so
// plainly instead of pretending to work.
#if canImport(Glibc)
import Glibc
#endif

writeToStandardError("""
    plugboard-sh: the shell-plugin adapter is not built yet (issue #7).
    Plugins can be written with PluginKit in Swift, or in any language from docs/PROTOCOL.md.

    """)
exit(2)

/// Writes to fd 2 directly (the C `stderr` global is not concurrency-safe in Swift 6).
func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)
    _ = write(2, &bytes, bytes.count)
}
