#if canImport(Glibc)
import Glibc
#endif

/// Where the admin socket is, for the daemon and its clients alike.
public enum AdminSocket {
    /// /run/plugboard/admin.sock for root, else $XDG_RUNTIME_DIR/plugboard/admin.sock, or
    /// /tmp/plugboard-UID/admin.sock without XDG_RUNTIME_DIR.
    public static func defaultPath(environment: [String: String]) -> String {
        if getuid() == 0 { return "/run/plugboard/admin.sock" }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return runtime + "/plugboard/admin.sock" }
        return "/tmp/plugboard-\(getuid())/admin.sock"
    }

    /// ``defaultPath(environment:)`` for this process's environment.
    public static func defaultPath() -> String {
        var environment: [String: String] = [:]
        if let runtime = getenv("XDG_RUNTIME_DIR") { environment["XDG_RUNTIME_DIR"] = String(cString: runtime) }
        return defaultPath(environment: environment)
    }

    /// The label of the channel a client opens for admin requests.
    public static let channelLabel = "admin"
}
