/// One privilege a container plugin asks for beyond the safe defaults.
///
/// Written and parsed as `network=host`, `mount=SOURCE:DESTINATION[:ro]`,
/// `capability=CAP_NAME` or `device=/dev/NAME` — the form the refusal lists and
/// `plugboard plugin add --grant` takes.
public enum Privilege: Sendable, Hashable, CustomStringConvertible, Comparable {
    /// Share the host's network namespace (`network=host`).
    case hostNetwork
    /// Bind the host's `source` at `destination`, read-only if `readonly` (`mount=SOURCE:DESTINATION[:ro]`).
    case mount(source: String, destination: String, readonly: Bool)
    /// A Linux capability, by its full name (`capability=CAP_NET_ADMIN`).
    case capability(String)
    /// A host device node (`device=/dev/fuse`).
    case device(String)

    /// The written form, which ``init(_:)`` parses.
    public var description: String {
        switch self {
        case .hostNetwork: return "network=host"
        case .mount(let s, let d, let ro): return "mount=\(s):\(d)\(ro ? ":ro" : "")"
        case .capability(let c): return "capability=\(c)"
        case .device(let d): return "device=\(d)"
        }
    }

    /// Orders privileges by their written form.
    public static func < (a: Privilege, b: Privilege) -> Bool { a.description < b.description }

    /// Parses the written form; nil when `text` is not a privilege.
    public init?(_ text: String) {
        guard let eq = text.firstIndex(of: "=") else { return nil }
        let key = text[..<eq]
        let value = String(text[text.index(after: eq)...])
        switch key {
        case "network" where value == "host": self = .hostNetwork
        case "capability" where !value.isEmpty:
            let c = value.uppercased()
            self = .capability(c.hasPrefix("CAP_") ? c : "CAP_" + c)
        case "device" where value.hasPrefix("/dev/"): self = .device(value)
        case "mount":
            var parts = value.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            var readonly = false
            if parts.count == 3, parts[2] == "ro" { readonly = true; parts.removeLast() }
            guard parts.count == 2, parts.allSatisfy({ $0.hasPrefix("/") }) else { return nil }
            self = .mount(source: parts[0], destination: parts[1], readonly: readonly)
        default: return nil
        }
    }

    /// What `requested` asks for that `granted` does not cover, in order.
    public static func missing(_ requested: [Privilege], granted: Set<Privilege>, all: Bool) -> [Privilege] {
        all ? [] : requested.filter { !granted.contains($0) }
    }

    /// The refusal an operator sees, like `docker plugin install` shows.
    public static func refusal(plugin: String, missing: [Privilege]) -> String {
        """
        container plugin \(plugin) asks for privileges that were not granted:
        \(missing.map { "  - \($0)" }.joined(separator: "\n"))
        Grant them all with --grant-all-permissions, or one by one with --grant PRIVILEGE (for example --grant \(missing[0])).
        """
    }
}
