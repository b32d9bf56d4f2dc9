#if canImport(Glibc)
import Glibc
#endif

/// One mounted cgroup hierarchy: the unified (v2) one, or a v1 hierarchy with its
/// controllers (memory, pids, freezer, cpu, …), as `/proc/self/mountinfo` lists them.
struct CgroupHierarchy: Sendable, Hashable {
    enum Version: Sendable, Hashable { case v1, v2 }

    /// Where it is mounted (`/sys/fs/cgroup`, `/sys/fs/cgroup/memory`, `/sys/fs/cgroup/unified`).
    let mount: String
    let version: Version
    /// v1: the controllers the hierarchy carries; v2: those the root offers (`cgroup.controllers`).
    let controllers: Set<String>

    /// Every cgroup hierarchy this process sees.
    static func mounted() -> [CgroupHierarchy] {
        guard let text = CgroupFile.read("/proc/self/mountinfo") else { return [] }
        var found: [CgroupHierarchy] = []
        for line in text.split(separator: "\n") {
            // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory"
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ")
            let right = halves[1].split(separator: " ")
            guard left.count >= 5, right.count >= 3 else { continue }
            let mount = unescape(String(left[4]))
            switch right[0] {
            case "cgroup2":
                let offered = CgroupFile.read(mount + "/cgroup.controllers").map { Set($0.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)) } ?? []
                found.append(CgroupHierarchy(mount: mount, version: .v2, controllers: offered))
            case "cgroup":
                let options = right[2].split(separator: ",").map(String.init)
                let known: Set<String> = ["memory", "pids", "freezer", "cpu", "cpuacct", "cpuset", "devices", "blkio", "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"]
                found.append(CgroupHierarchy(mount: mount, version: .v1, controllers: Set(options.filter(known.contains))))
            default:
                continue
            }
        }
        return found
    }

    /// mountinfo escapes spaces and a few others as octal (`\040`).
    private static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "\\"), bytes.count >= 3, let n = UInt8(String(decoding: bytes.prefix(3), as: UTF8.self), radix: 8) {
                out.append(n)
                bytes = bytes.dropFirst(3)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Small reads and writes of cgroup (and proc) files, with errno in the error. Written by
/// hand: these are pseudo-files whose size stat reports as 0 or 4096, read in one go.
enum CgroupFile {
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            out += buffer[0..<n]
            if out.count > 4 << 20 { break }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Writes `text` to `path` in one write; the kernel's answer (EBUSY, EINVAL, …) is the error.
    static func write(_ path: String, _ text: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CgroupError(path: path, errno: errno, what: "open") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else { throw CgroupError(path: path, errno: errno, what: "write \(text.debugDescription) to") }
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The subdirectories of `path` (cgroups below a cgroup).
    static func subdirectories(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

/// A cgroup file could not be read or written.
struct CgroupError: Error, CustomStringConvertible {
    let path: String
    let errno: Int32
    let what: String
    var description: String { "cannot \(what) \(path): \(String(cString: strerror(errno)))" }
}
