/// What one plugin may use, applied through its cgroup (`plugboard plugin set NAME
/// memory=256M pids=64 cpu=0.5`). Nil is no limit.
public struct ResourceLimits: Sendable, Hashable {
    /// Memory in bytes (`memory.max`, v1 `memory.limit_in_bytes`); past it the kernel kills the plugin.
    public var memoryBytes: Int64?
    /// Processes and threads (`pids.max`); past it fork and clone fail in the plugin.
    public var pids: Int64?
    /// CPU time in cores (`cpu.max`, v1 `cpu.cfs_quota_us` over a 100 ms period): 0.5 is half a core.
    public var cpus: Double?
    /// Channels the plugin may have open on its session to plugboardd at once (`channels`;
    /// default ``defaultChannels``): past it an OPEN is refused with a RESET saying so.
    public var channels: Int?

    /// The channels a plugin may open when nothing else is set (Chan's default: 1024).
    public static let defaultChannels = 1024

    /// No limits.
    public init(memoryBytes: Int64? = nil, pids: Int64? = nil, cpus: Double? = nil) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpus = cpus
    }

    /// "64 MiB", "1.5 GiB", "900 KiB".
    static func describe(bytes: Int64) -> String {
        let units: [(String, Double)] = [("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024)]
        for (unit, size) in units where Double(bytes) >= size {
            let n = Double(bytes) / size
            return (n == n.rounded() ? String(Int64(n)) : String((n * 10).rounded() / 10)) + " " + unit
        }
        return "\(bytes) bytes"
    }

    /// Whether no limit is set.
    public var isEmpty: Bool { memoryBytes == nil && pids == nil && cpus == nil }

    /// Whether a cgroup limit is set (the channel cap is the session's, not the cgroup's).
    var needsCgroup: Bool { !isEmpty }

    /// The setting names: `memory`, `pids`, `cpu`.
    static let keys: Set<String> = ["memory", "pids", "cpu", "channels"]

    /// Sets `key` from its text: `memory=256M` (bytes, or K, M, G), `pids=64`, `cpu=0.5`;
    /// `none` removes the limit.
    mutating func set(_ key: String, _ text: String) throws {
        let none = text == "none" || text == "max"
        switch key {
        case "memory":
            if none { memoryBytes = nil; return }
            let units: [(String, Int64)] = [("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)]
            var scale: Int64 = 1
            var digits = Substring(text)
            for (suffix, s) in units where text.uppercased().hasSuffix(suffix) {
                scale = s
                digits = digits.dropLast()
            }
            guard let n = Int64(digits), n > 0, n <= Int64.max / scale, n * scale >= 4 << 20 else {
                throw EngineError(.badSetting, "memory is a size of at least 4M (bytes, or with K, M or G), or none; not \(text)")
            }
            memoryBytes = n * scale
        case "pids":
            if none { pids = nil; return }
            guard let n = Int64(text), n >= 1, n <= 4_194_304 else {
                throw EngineError(.badSetting, "pids is a count from 1 to 4194304, or none; not \(text)")
            }
            pids = n
        case "channels":
            if none { channels = nil; return }
            guard let n = Int(text), n >= 1, n <= 1 << 20 else {
                throw EngineError(.badSetting, "channels is a count from 1 to 1048576 (default \(Self.defaultChannels)), or none; not \(text)")
            }
            channels = n
        case "cpu":
            if none { cpus = nil; return }
            guard let n = Double(text), n >= 0.01, n <= 1024 else {
                throw EngineError(.badSetting, "cpu is a number of cores from 0.01 to 1024 (0.5 is half a core), or none; not \(text)")
            }
            cpus = n
        default:
            throw EngineError(.badSetting, "\(key) is not a resource limit; the limits are memory, pids, cpu and channels")
        }
    }
}

/// What a plugin's cgroup uses now.
public struct ResourceUsage: Sendable, Hashable {
    /// Memory charged to it, in bytes, when a memory controller is there.
    public var memoryBytes: Int64?
    /// Processes and threads in it, when a pids controller is there.
    public var pids: Int64?
    /// Times the kernel killed something in it for passing its memory limit.
    public var oomKills: Int64
}
