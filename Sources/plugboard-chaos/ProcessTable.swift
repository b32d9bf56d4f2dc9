#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// What /proc says about processes: enough to find zombies, orphans and descendants.
struct ProcessInfoEntry {
    var pid: pid_t
    var parent: pid_t
    var state: Character
    var commandLine: String
}

enum ProcessTable {
    static func all() -> [ProcessInfoEntry] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { name -> ProcessInfoEntry? in
            guard let pid = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, let state = fields[0].first, let parent = pid_t(fields[1]) else { return nil }
            let raw = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            let command = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return ProcessInfoEntry(pid: pid, parent: parent, state: state, commandLine: command)
        }
    }

    /// Every descendant of `root`.
    static func descendants(of root: pid_t, in table: [ProcessInfoEntry]) -> [ProcessInfoEntry] {
        var found: [ProcessInfoEntry] = []
        var frontier: Set<pid_t> = [root]
        while !frontier.isEmpty {
            let next = table.filter { frontier.contains($0.parent) }
            found += next
            frontier = Set(next.map(\.pid))
        }
        return found
    }

    static func openDescriptors(_ pid: pid_t) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }

    /// What each open descriptor points at ("pipe:[123]", "socket:[456]", a path), by kind.
    static func descriptorKinds(_ pid: pid_t) -> [String: Int] {
        var kinds: [String: Int] = [:]
        for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? [] {
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?"
            let kind = target.hasPrefix("/") || target.hasPrefix("anon_inode") ? target : String(target.prefix { $0 != ":" })
            kinds[kind, default: 0] += 1
        }
        return kinds
    }

    static func residentBytes(_ pid: pid_t) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }
}
