/// Why a call to a script failed; the message reaches the caller.
public enum ShellCallError: Error, CustomStringConvertible, Hashable {
    /// It printed something that is not an answer in its format.
    case garbage(String)
    /// It exited non-zero (or was killed); the message is its stderr.
    case failed(String)
    /// It ran past its timeout and its process group was killed.
    case timedOut(String)
    /// It printed more than the adapter keeps.
    case tooMuchOutput(String)
    /// The payload cannot be handed over in the script's format (env: a NUL byte in a
    /// value, two keys that become one variable); the script was not run.
    case unrepresentable(String)

    public var description: String {
        switch self {
        case .garbage(let m): return "the script's answer is garbage: \(m)"
        case .failed(let m), .timedOut(let m), .tooMuchOutput(let m), .unrepresentable(let m): return m
        }
    }
}
