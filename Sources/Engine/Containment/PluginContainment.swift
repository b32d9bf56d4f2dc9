#if canImport(Glibc)
import Glibc
#endif
import Logging

/// Where plugboardd keeps its plugins' processes: a cgroup per exec plugin (and so per
/// shell plugin, and everything either starts) under `plugboard/INSTANCE` in each cgroup
/// hierarchy it can write, INSTANCE being named after the state directory so that the
/// next plugboardd on that directory finds what its predecessor left.
///
/// A plugin ends whole: its cgroup is killed (v2 `cgroup.kill`, or v1 freeze, kill,
/// thaw), so double-forked and `setsid` descendants go with it. The same cgroup carries
/// its resource limits. On cgroup v2 one hierarchy does both; on the v1/hybrid layout the
/// unified hierarchy (or the freezer) tracks the processes and the v1 memory, pids and cpu
/// hierarchies carry the limits. Where nothing is writable the plugins run in process
/// groups only, and the log says that descendants which leave the group are not contained.
public final class PluginContainment: Sendable {
    /// How the processes of a plugin are found and killed.
    enum Tracking: Sendable, Hashable {
        /// A v2 hierarchy: `cgroup.procs`, and `cgroup.kill` when the kernel has it (5.14+).
        case unified(CgroupHierarchy)
        /// A v1 freezer hierarchy: freeze, kill what is listed, thaw.
        case freezer(CgroupHierarchy)
        /// A v1 pids hierarchy: kill what is listed until nothing is.
        case listed(CgroupHierarchy)

        var hierarchy: CgroupHierarchy {
            switch self {
            case .unified(let h), .freezer(let h), .listed(let h): return h
            }
        }
    }

    /// The cgroup path below each hierarchy's mount: `plugboard/INSTANCE`.
    let base: String
    let tracking: Tracking?
    /// The hierarchy that carries each limit's controller: memory, pids, cpu.
    let limits: [String: CgroupHierarchy]
    private let logger: Logger

    /// What containment this daemon has, for its start-up log line.
    public let summary: String

    /// The containment of a plugboardd whose state is in `stateDirectory`.
    public convenience init(stateDirectory: String, logger: Logger) {
        self.init(instance: Self.instanceName(stateDirectory: stateDirectory), logger: logger)
    }

    /// Containment under `plugboard/INSTANCE` in every writable hierarchy.
    init(instance: String, logger: Logger, hierarchies: [CgroupHierarchy] = CgroupHierarchy.mounted()) {
        self.logger = logger
        base = "plugboard/" + instance
        func usable(_ h: CgroupHierarchy) -> Bool {
            let dir = h.mount + "/plugboard/" + instance
            _ = mkdir(h.mount + "/plugboard", 0o755)
            _ = mkdir(dir, 0o755)
            return access(dir + "/cgroup.procs", W_OK) == 0
        }
        let writable = hierarchies.filter(usable)
        let unified = writable.first { $0.version == .v2 }
        if let unified {
            tracking = .unified(unified)
        } else if let freezer = writable.first(where: { $0.version == .v1 && $0.controllers.contains("freezer") }) {
            tracking = .freezer(freezer)
        } else if let pids = writable.first(where: { $0.version == .v1 && $0.controllers.contains("pids") }) {
            tracking = .listed(pids)
        } else {
            tracking = nil
        }
        var limits: [String: CgroupHierarchy] = [:]
        for controller in ["memory", "pids", "cpu"] {
            if let unified, unified.controllers.contains(controller) {
                limits[controller] = unified
            } else if let v1 = writable.first(where: { $0.version == .v1 && $0.controllers.contains(controller) }) {
                limits[controller] = v1
            }
        }
        self.limits = limits
        // v2 hands controllers down only through cgroup.subtree_control, level by level.
        if let unified {
            let wanted = ["memory", "pids", "cpu"].filter { limits[$0] == unified }
            if !wanted.isEmpty {
                for dir in [unified.mount, unified.mount + "/plugboard", unified.mount + "/plugboard/" + instance] {
                    try? CgroupFile.write(dir + "/cgroup.subtree_control", wanted.map { "+" + $0 }.joined(separator: " "))
                }
            }
        }
        switch tracking {
        case .unified(let h)?:
            summary = "cgroup v2 at \(h.mount)/\(base)" + (CgroupFile.exists(h.mount + "/cgroup.kill") ? " (cgroup.kill)" : "")
                + "; limits: " + (limits.isEmpty ? "none available" : limits.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value.version == .v2 ? "v2" : "v1"))" }.joined(separator: ", "))
        case .freezer(let h)?, .listed(let h)?:
            summary = "cgroup v1 \(h.controllers.sorted().joined(separator: ",")) at \(h.mount)/\(base); limits: "
                + (limits.isEmpty ? "none available" : limits.keys.sorted().joined(separator: ", "))
        case nil:
            summary = "no writable cgroup hierarchy: plugins run in process groups only, and descendants that leave their process group (setsid) are not contained"
        }
    }

    /// Whether plugins get cgroups at all.
    public var isAvailable: Bool { tracking != nil }

    /// A short, stable name for the daemon that keeps its state in `stateDirectory`.
    public static func instanceName(stateDirectory: String) -> String {
        var path = stateDirectory
        if let real = realpath(stateDirectory, nil) {
            path = String(cString: real)
            free(real)
        }
        // FNV-1a: stable across runs and builds (Hasher is seeded per process).
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in path.utf8 {
            hash ^= UInt64(b)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "d" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The cgroup of plugin `name` (a validated plugin name), made if it is not there.
    func group(for name: String) throws -> PluginCgroup {
        guard let tracking else { throw EngineError(.startFailed, "no cgroup hierarchy is writable") }
        var hierarchies = [tracking.hierarchy]
        for h in limits.values where !hierarchies.contains(h) { hierarchies.append(h) }
        let group = PluginCgroup(plugin: name, tracking: tracking, base: base, hierarchies: hierarchies, limits: limits)
        for dir in group.directories where mkdir(dir, 0o755) != 0 && errno != EEXIST {
            throw CgroupError(path: dir, errno: errno, what: "make cgroup")
        }
        return group
    }

    /// Ends whatever a previous plugboardd's plugins left in this instance's cgroups (it was
    /// killed, or its plugins' descendants outlived it) and removes those cgroups. Returns
    /// what it ended, by plugin.
    func sweepLeftovers() async -> [(plugin: String, pids: [pid_t])] {
        guard let tracking else { return [] }
        var ended: [(plugin: String, pids: [pid_t])] = []
        for name in CgroupFile.subdirectories(tracking.hierarchy.mount + "/" + base) {
            let group = PluginCgroup(plugin: name, tracking: tracking, base: base, hierarchies: [tracking.hierarchy] + limits.values.filter { $0 != tracking.hierarchy }, limits: limits)
            let pids = await group.killAll()
            if !pids.isEmpty { ended.append((name, pids)) }
            await group.remove()
        }
        // Limit-only hierarchies may hold empty leftovers too.
        for h in Set(limits.values) where h != tracking.hierarchy {
            for name in CgroupFile.subdirectories(h.mount + "/" + base) { _ = rmdir(h.mount + "/" + base + "/" + name) }
        }
        return ended
    }

    /// Removes this instance's (empty) cgroup directories, at a clean shutdown.
    func removeInstance() {
        guard let tracking else { return }
        for h in Set([tracking.hierarchy] + limits.values) { _ = rmdir(h.mount + "/" + base) }
    }
}
