#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// What a process is doing, read from `/proc` just before the daemon gives up on it: whether a
/// plugin that sent no HELLO in time was starved of CPU (running, little CPU used) or stuck
/// (sleeping, and where in the kernel).
struct ProcessSnapshot: Sendable, CustomStringConvertible {
    /// The state letter of `/proc/PID/stat` (R, S, D, T, Z …).
    let state: Character
    /// User plus system CPU time since it started.
    let cpuSeconds: Double
    /// Wall time since it started.
    let ageSeconds: Double
    /// The kernel function it sleeps in (`/proc/PID/wchan`), when readable and not "0".
    let waitingIn: String?

    /// Reads the snapshot of `pid`; nil when it is gone or `/proc` is not readable.
    static func of(_ pid: pid_t) -> ProcessSnapshot? {
        guard let stat = CgroupFile.read("/proc/\(pid)/stat"),
              let uptimeText = CgroupFile.read("/proc/uptime"),
              let uptime = Double(uptimeText.split(separator: " ").first ?? "") else { return nil }
        // "PID (comm) S ppid …": comm may hold spaces and parentheses; the fields start after the last ")".
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // Field 3 is the state; 14 and 15 utime and stime; 22 starttime (in clock ticks).
        guard fields.count > 19, let state = fields[0].first,
              let utime = Double(fields[11]), let stime = Double(fields[12]), let start = Double(fields[19]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        guard ticks > 0 else { return nil }
        let wchan = CgroupFile.read("/proc/\(pid)/wchan").map { $0.trimmingCharacters(in: [" ", "\n"]) }
        return ProcessSnapshot(
            state: state, cpuSeconds: (utime + stime) / ticks, ageSeconds: max(0, uptime - start / ticks),
            waitingIn: wchan.flatMap { $0.isEmpty || $0 == "0" ? nil : $0 }
        )
    }

    var description: String {
        let names: [Character: String] = ["R": "running", "S": "sleeping", "D": "in uninterruptible sleep", "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie"]
        let cpu = (cpuSeconds * 100).rounded() / 100
        let age = (ageSeconds * 10).rounded() / 10
        var text = "it was \(names[state] ?? "in state \(state)") and had used \(cpu) s of CPU in \(age) s"
        if state != "R", let waitingIn { text += ", waiting in \(waitingIn)" }
        return text
    }
}
