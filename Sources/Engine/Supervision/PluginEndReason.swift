import Spawn

/// Why one run of a plugin ended: what the log and `plugboard plugin inspect` show, and
/// what the restart decision reads (never a message's wording).
public enum PluginEndReason: Sendable, Hashable, CustomStringConvertible {
    /// The process exited with this status, its session in order until then.
    case exited(Int32)
    /// A signal ended the process, its session in order until then.
    case signalled(Int32)
    /// It broke the protocol (a malformed frame, an overrun window, …) and was cut off;
    /// `then` is how its process ended afterwards, when known.
    case protocolViolation(String, then: ExitStatus?)
    /// Its session ended (it closed fd 4, sent GOAWAY) while the process lived on; the
    /// daemon then stopped it, and `then` is how it ended.
    case sessionEnded(String, then: ExitStatus?)
    /// Starting it again failed.
    case startFailed(String)
    /// The kernel killed it for passing its memory limit (bytes); `then` is how its process ended.
    case overMemoryLimit(Int64, then: ExitStatus?)
    /// Its new declaration claims what another plugin holds (a job): restarting cannot
    /// help, so it ends `failed` with this as its reason.
    case registrationConflict(String)
    /// Starting it again failed for want of the daemon's own resources (EMFILE: out of
    /// file descriptors): not the plugin's fault, so it does not count toward its crash loop.
    case daemonOutOfResources(String)

    /// The reason for a process that ended with `status`.
    public init(_ status: ExitStatus) {
        switch status {
        case .exited(let code): self = .exited(code)
        case .signaled(let signal): self = .signalled(signal)
        }
    }

    /// An ordinary `exit(0)`: the only end the `on-failure` policy leaves alone.
    public var isCleanExit: Bool { self == .exited(0) }

    /// The daemon, not the plugin, was at fault (it ran out of descriptors).
    public var isDaemonsFault: Bool {
        if case .daemonOutOfResources = self { return true }
        return false
    }

    /// The plugin was cut off for breaking the protocol.
    public var isProtocolViolation: Bool {
        if case .protocolViolation = self { return true }
        return false
    }

    /// "exited with status 3", "killed by signal 9", "broke the protocol (…); then exited with status 0", …
    public var description: String {
        switch self {
        case .exited(let code): return ExitStatus.exited(code).description
        case .signalled(let signal): return ExitStatus.signaled(signal).description
        case .protocolViolation(let detail, let then): return "broke the protocol (\(detail))" + (then.map { "; then \($0)" } ?? "")
        case .sessionEnded(let detail, let then): return "its session ended (\(detail))" + (then.map { "; then \($0)" } ?? "")
        case .startFailed(let detail): return "its restart failed: \(detail)"
        case .daemonOutOfResources(let detail): return "plugboardd could not start it: \(detail)"
        case .overMemoryLimit(let bytes, let then): return "killed for passing its memory limit of \(ResourceLimits.describe(bytes: bytes))" + (then.map { " (\($0))" } ?? "")
        case .registrationConflict(let detail): return "its declaration conflicts with another plugin: \(detail)"
        }
    }

    /// A short machine-readable kind: exited, signalled, protocol-violation, session-ended,
    /// start-failed, daemon-out-of-resources, over-memory-limit, registration-conflict.
    public var kind: String {
        switch self {
        case .exited: return "exited"
        case .signalled: return "signalled"
        case .protocolViolation: return "protocol-violation"
        case .sessionEnded: return "session-ended"
        case .startFailed: return "start-failed"
        case .daemonOutOfResources: return "daemon-out-of-resources"
        case .overMemoryLimit: return "over-memory-limit"
        case .registrationConflict: return "registration-conflict"
        }
    }
}
