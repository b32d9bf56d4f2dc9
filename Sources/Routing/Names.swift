/// The forms names take where they enter plugboardd: from the admin socket, the command
/// line and plugins' declarations. A name that breaks them is refused there, with the
/// rule it broke, before it reaches a path, a log line or `plugboard plugin ls`.
///
/// - A **plugin name** is 1 to 64 characters: ASCII letters, digits, `.`, `_` and `-`,
///   starting with a letter or a digit (so never `.`, `..` or anything with `/`). Plugin
///   names become parts of paths (container bundles, cgroups) and columns in `plugin ls`.
///   ``reservedPluginNames`` belong to the engine.
/// - A **registration name** (a job, an extension point, a hook event, a pipeline message
///   type, a grant) is 1 to 128 characters of printable ASCII other than the space.
public enum Names {
    /// The longest plugin name.
    public static let maxPluginName = 64
    /// The longest job, event, message type or extension point name.
    public static let maxRegistrationName = 128

    /// Names only the engine gives: `operator` (what the admin socket's callers are called on
    /// the event bus), `plugboardd` and `engine`, and the built-in services.
    public static let reservedPluginNames: Set<String> = ["operator", "plugboardd", "engine", "events", "state", "metrics"]

    /// What is wrong with `name` as a plugin name, or nil when it is a good one. Reserved
    /// names are refused unless `allowReserved` (the daemon's own services).
    public static func problem(withPluginName name: String, allowReserved: Bool = false) -> String? {
        let shown = String(name.unicodeScalars.prefix(40).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7f ? Character($0) : "?" })
        let quoted = "\"\(shown)\(name.unicodeScalars.count > 40 ? "…" : "")\""
        if name.isEmpty { return "a plugin name cannot be empty" }
        if name.utf8.count > maxPluginName {
            return "plugin name \(quoted) is \(name.utf8.count) bytes long; the limit is \(maxPluginName)"
        }
        guard let first = name.utf8.first, isLetterOrDigit(first) else {
            return "plugin name \(quoted) must start with a letter or a digit"
        }
        if let bad = name.utf8.first(where: { !(isLetterOrDigit($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")) }) {
            return "plugin name \(quoted) holds \(describe(bad)); a plugin name is ASCII letters, digits, '.', '_' and '-'"
        }
        if !allowReserved, reservedPluginNames.contains(name) {
            return "plugin name \(quoted) is reserved for the engine (reserved: \(reservedPluginNames.sorted().joined(separator: ", ")))"
        }
        return nil
    }

    /// What is wrong with `name` as the name of a `what` (job, hook event, message type,
    /// extension point), or nil when it is a good one.
    public static func problem(withRegistrationName name: String, what: String) -> String? {
        if name.isEmpty { return "a \(what) name cannot be empty" }
        if name.utf8.count > maxRegistrationName {
            return "\(what) name \"\(name.prefix(40))…\" is \(name.utf8.count) bytes long; the limit is \(maxRegistrationName)"
        }
        if let bad = name.utf8.first(where: { $0 <= 0x20 || $0 >= 0x7f }) {
            return "\(what) name \"\(String(name.unicodeScalars.prefix(40).map { $0.value > 0x20 && $0.value < 0x7f ? Character($0) : "?" }))\" holds \(describe(bad)); it must be printable ASCII without spaces"
        }
        return nil
    }

    private static func isLetterOrDigit(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
    }

    private static func describe(_ b: UInt8) -> String {
        switch b {
        case 0x0a: return "a newline"
        case 0x00: return "a NUL"
        case 0x20: return "a space"
        case UInt8(ascii: "/"): return "'/'"
        case 0x21..<0x7f: return "'\(Character(Unicode.Scalar(b)))'"
        default: return "byte 0x" + (b < 16 ? "0" : "") + String(b, radix: 16)
        }
    }
}
