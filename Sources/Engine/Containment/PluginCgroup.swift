#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// One plugin's cgroup, in each hierarchy its containment uses: the processes it started,
/// wherever they went, and its resource limits.
struct PluginCgroup: Sendable {
    let plugin: String
    let tracking: PluginContainment.Tracking
    let base: String
    let hierarchies: [CgroupHierarchy]
    let limits: [String: CgroupHierarchy]
    /// Whether its processes are in its cgroup of the separate v1 cpu hierarchy: only while it
    /// has a cpu limit (``apply(_:)`` moves them in and out).
    private(set) var joinsSeparateCPU = false

    init(plugin: String, tracking: PluginContainment.Tracking, base: String, hierarchies: [CgroupHierarchy], limits: [String: CgroupHierarchy]) {
        self.plugin = plugin
        self.tracking = tracking
        self.base = base
        self.hierarchies = hierarchies
        self.limits = limits
    }

    /// The plugin's directory in each hierarchy.
    var directories: [String] { hierarchies.map(directory) }

    func directory(_ h: CgroupHierarchy) -> String { h.mount + "/" + base + "/" + plugin }

    private var trackingDirectory: String { directory(tracking.hierarchy) }

    /// The v1 cpu hierarchy, when it is mounted apart from the tracking, memory and pids ones.
    ///
    /// A plugin without a cpu limit stays out of it, in plugboardd's own cpu cgroup, and is
    /// scheduled like any other process. CFS weighs each cgroup as one entity against its
    /// siblings: kept under `plugboard/INSTANCE` in this hierarchy, all the plugins of all
    /// daemons together got the CPU share of a single process, and under load (the test suite
    /// on two cores) four shell plugins took more than 10 s to say HELLO. On cgroup v2 one
    /// hierarchy carries everything and this separation is not possible (see docs/RELIABILITY.md).
    var separateCPU: CgroupHierarchy? {
        guard let h = limits["cpu"], h.version == .v1, h != tracking.hierarchy, limits["memory"] != h, limits["pids"] != h else { return nil }
        return h
    }

    /// The `cgroup.procs` files a new process joins (the exec shim writes itself into each
    /// before it execs the plugin, so that nothing the plugin does escapes them).
    var procsFiles: [String] {
        hierarchies.filter { $0 != separateCPU || joinsSeparateCPU }.map { directory($0) + "/cgroup.procs" }
    }

    /// Moves `pid` into every hierarchy's cgroup (when there is no shim to do it from inside).
    func join(_ pid: pid_t) throws {
        for file in procsFiles { try CgroupFile.write(file, "\(pid)") }
    }

    /// The processes in it now.
    func pids() -> [pid_t] {
        (CgroupFile.read(trackingDirectory + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    /// Kills every process in the cgroup and waits (up to `patience`) until it is empty.
    /// Returns the processes it found there.
    ///
    /// v2 with `cgroup.kill`: one write kills them all, atomically with respect to forks.
    /// v1 freezer: freeze (no fork races while we list), SIGKILL each, thaw. Otherwise kill
    /// what is listed until nothing is. The kernel gives no event for "empty" on v1, so
    /// the wait polls every 5 ms.
    @discardableResult
    func killAll(patience: Duration = .seconds(5)) async -> [pid_t] {
        let found = pids()
        guard !found.isEmpty else { return [] }
        let dir = trackingDirectory
        switch tracking {
        case .unified:
            if (try? CgroupFile.write(dir + "/cgroup.kill", "1")) == nil { killListed() }
        case .freezer:
            try? CgroupFile.write(dir + "/freezer.state", "FROZEN")
            let frozenBy = ContinuousClock.now + .seconds(1)
            while ContinuousClock.now < frozenBy, CgroupFile.read(dir + "/freezer.state")?.hasPrefix("FROZEN") != true {
                try? await Task.sleep(for: .milliseconds(5))
            }
            killListed()
            try? CgroupFile.write(dir + "/freezer.state", "THAWED")
        case .listed:
            killListed()
        }
        let deadline = ContinuousClock.now + patience
        while !pids().isEmpty, ContinuousClock.now < deadline {
            killListed()
            try? await Task.sleep(for: .milliseconds(5))
        }
        return found
    }

    private func killListed() {
        for pid in pids() where pid > 1 { kill(pid, SIGKILL) }
    }

    /// Removes its directories (once empty).
    func remove() async {
        for dir in directories.reversed() {
            // A cgroup whose last process just died may be busy for a moment.
            for _ in 0..<100 {
                if rmdir(dir) == 0 || errno == ENOENT { break }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    /// Applies `wanted`; an unset limit is lifted. Throws when a controller is missing for a
    /// limit that is set, or the kernel refuses a value (memory below what is in use on v1).
    /// In a separate v1 cpu hierarchy a cpu limit moves the plugin's processes into its cgroup
    /// there, and lifting it moves them back to plugboardd's own.
    mutating func apply(_ wanted: ResourceLimits) throws {
        if let h = limits["memory"] {
            let value = wanted.memoryBytes.map(String.init)
            if h.version == .v2 {
                try CgroupFile.write(directory(h) + "/memory.max", value ?? "max")
            } else {
                try CgroupFile.write(directory(h) + "/memory.limit_in_bytes", value ?? "-1")
            }
        } else if wanted.memoryBytes != nil {
            throw EngineError(.badSetting, "plugin \(plugin): no memory cgroup controller is available here for a memory limit")
        }
        if let h = limits["pids"] {
            try CgroupFile.write(directory(h) + "/pids.max", wanted.pids.map(String.init) ?? "max")
        } else if wanted.pids != nil {
            throw EngineError(.badSetting, "plugin \(plugin): no pids cgroup controller is available here for a pids limit")
        }
        if let h = limits["cpu"] {
            let quota = wanted.cpus.map { String(Int64(($0 * 100_000).rounded())) }
            if h.version == .v2 {
                try CgroupFile.write(directory(h) + "/cpu.max", "\(quota ?? "max") 100000")
            } else {
                try CgroupFile.write(directory(h) + "/cpu.cfs_period_us", "100000")
                try CgroupFile.write(directory(h) + "/cpu.cfs_quota_us", quota ?? "-1")
                if h == separateCPU {
                    if quota != nil, !joinsSeparateCPU {
                        try moveProcesses(of: trackingDirectory, to: directory(h))
                        joinsSeparateCPU = true
                    } else if quota == nil, joinsSeparateCPU {
                        try moveProcesses(of: directory(h), to: h.mount + Self.ownCgroup(in: h))
                        joinsSeparateCPU = false
                    }
                }
            }
        } else if wanted.cpus != nil {
            throw EngineError(.badSetting, "plugin \(plugin): no cpu cgroup controller is available here for a cpu limit")
        }
    }

    /// Moves every process listed in `source` into the cgroup `target` (v1: one write moves a
    /// whole thread group). A process that forks while it moves may leave its child behind, so
    /// this goes on until a pass finds nothing left to move (at most 10 passes). A process
    /// that is gone by the time it is written (ESRCH) is skipped.
    private func moveProcesses(of source: String, to target: String) throws {
        for _ in 0..<10 {
            let moved = Set((CgroupFile.read(target + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { pid_t($0) })
            let left = (CgroupFile.read(source + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { pid_t($0) }.filter { !moved.contains($0) }
            guard !left.isEmpty else { return }
            for pid in left {
                do { try CgroupFile.write(target + "/cgroup.procs", "\(pid)") } catch let error as CgroupError where error.errno == ESRCH { continue }
            }
        }
    }

    /// plugboardd's own cgroup in `h`, from `/proc/self/cgroup` ("4:cpu,cpuacct:/path").
    static func ownCgroup(in h: CgroupHierarchy) -> String {
        for line in (CgroupFile.read("/proc/self/cgroup") ?? "").split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, !Set(fields[1].split(separator: ",").map(String.init)).isDisjoint(with: h.controllers) else { continue }
            return fields[2] == "/" ? "" : String(fields[2])
        }
        return ""
    }

    /// Memory and processes in use, and the memory-limit kills so far.
    func usage() -> ResourceUsage {
        var usage = ResourceUsage(memoryBytes: nil, pids: nil, oomKills: 0)
        if let h = limits["memory"] {
            let file = h.version == .v2 ? "/memory.current" : "/memory.usage_in_bytes"
            usage.memoryBytes = CgroupFile.read(directory(h) + file).flatMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            // v2 memory.events and v1 memory.oom_control both carry an "oom_kill N" line.
            let events = CgroupFile.read(directory(h) + (h.version == .v2 ? "/memory.events" : "/memory.oom_control")) ?? ""
            for line in events.split(separator: "\n") where line.hasPrefix("oom_kill ") {
                usage.oomKills = Int64(line.dropFirst("oom_kill ".count)) ?? 0
            }
        }
        if let h = limits["pids"] {
            usage.pids = CgroupFile.read(directory(h) + "/pids.current").flatMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        return usage
    }
}
