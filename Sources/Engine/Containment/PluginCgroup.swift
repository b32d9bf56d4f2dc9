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

    /// The plugin's directory in each hierarchy.
    var directories: [String] { hierarchies.map(directory) }

    func directory(_ h: CgroupHierarchy) -> String { h.mount + "/" + base + "/" + plugin }

    private var trackingDirectory: String { directory(tracking.hierarchy) }

    /// The `cgroup.procs` files a new process joins (the exec shim writes itself into each
    /// before it execs the plugin, so that nothing the plugin does escapes them).
    var procsFiles: [String] { directories.map { $0 + "/cgroup.procs" } }

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
    func apply(_ wanted: ResourceLimits) throws {
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
            }
        } else if wanted.cpus != nil {
            throw EngineError(.badSetting, "plugin \(plugin): no cpu cgroup controller is available here for a cpu limit")
        }
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
