#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The part of the OCI runtime spec (config.json, spec 1.0) that Plugboard writes.
///
/// Plugboard writes the spec itself, from a plugin's manifest or a container spec, so the
/// defaults are ours and safe: a read-only rootfs, a private network namespace, no
/// capabilities beyond those granted, no host mounts beyond those granted.
public struct OCISpec: Codable, Sendable, Hashable {
    /// The user and group ids the process runs as.
    public struct User: Codable, Sendable, Hashable { public var uid: UInt32; public var gid: UInt32 }
    /// The process's capability sets (Plugboard puts the same list in each).
    public struct Capabilities: Codable, Sendable, Hashable {
        /// The bounding set.
        public var bounding: [String]
        /// The effective set.
        public var effective: [String]
        /// The permitted set.
        public var permitted: [String]
        /// The ambient set.
        public var ambient: [String]
    }
    /// One resource limit: its `type` (`RLIMIT_NOFILE`) and its hard and soft values.
    public struct RLimit: Codable, Sendable, Hashable { public var type: String; public var hard: UInt64; public var soft: UInt64 }
    /// The process to run, with its environment, user, capabilities and limits.
    public struct Process: Codable, Sendable, Hashable {
        /// Whether runc gives it a terminal (Plugboard: never).
        public var terminal: Bool
        /// Whom it runs as.
        public var user: User
        /// The program and its arguments.
        public var args: [String]
        /// The environment, as `KEY=VALUE` entries.
        public var env: [String]
        /// The working directory inside the container.
        public var cwd: String
        /// Its capabilities.
        public var capabilities: Capabilities
        /// Its resource limits.
        public var rlimits: [RLimit]
        /// Forbids gaining privileges through exec (setuid binaries and the like).
        public var noNewPrivileges: Bool
    }
    /// The root filesystem: its path and whether it is mounted read-only.
    public struct Root: Codable, Sendable, Hashable { public var path: String; public var readonly: Bool }
    /// One mount in the container.
    public struct Mount: Codable, Sendable, Hashable {
        /// Where it appears inside the container.
        public var destination: String
        /// The filesystem type (`bind`, `proc`, `tmpfs`, …).
        public var type: String
        /// What is mounted: a host path, or the filesystem's source name.
        public var source: String
        /// Mount options; nil for none.
        public var options: [String]?
    }
    /// A Linux namespace the container gets its own of (`pid`, `network`, …).
    public struct Namespace: Codable, Sendable, Hashable { public var type: String }
    /// A device cgroup rule: allows or denies access to devices by type and number.
    public struct DeviceRule: Codable, Sendable, Hashable {
        /// Allow (true) or deny (false).
        public var allow: Bool
        /// `c` or `b`; nil for every type.
        public var type: String?
        /// The major number; nil for any.
        public var major: Int64?
        /// The minor number; nil for any.
        public var minor: Int64?
        /// Which access: some of `r`, `w` and `m` (mknod).
        public var access: String
    }
    /// Cgroup resources: the device rules, and the limits a container plugin was given.
    public struct Resources: Codable, Sendable, Hashable {
        /// Which devices the container may use.
        public var devices: [DeviceRule]
        /// Its memory limit; nil for none.
        public var memory: MemoryLimit?
        /// Its process limit; nil for none.
        public var pids: PidsLimit?
        /// Its CPU quota; nil for none.
        public var cpu: CPULimit?
    }
    /// `linux.resources.memory`: bytes.
    public struct MemoryLimit: Codable, Sendable, Hashable { public var limit: Int64 }
    /// `linux.resources.pids`: processes and threads.
    public struct PidsLimit: Codable, Sendable, Hashable { public var limit: Int64 }
    /// `linux.resources.cpu`: `quota` microseconds of CPU per `period`.
    public struct CPULimit: Codable, Sendable, Hashable {
        /// Microseconds per period.
        public var quota: Int64
        /// The period in microseconds.
        public var period: UInt64
    }

    /// Sets the container's memory, pids and CPU limits (nil: none).
    public mutating func limit(memoryBytes: Int64?, pids: Int64?, cpus: Double?) {
        linux.resources.memory = memoryBytes.map { MemoryLimit(limit: $0) }
        linux.resources.pids = pids.map { PidsLimit(limit: $0) }
        linux.resources.cpu = cpus.map { CPULimit(quota: Int64(($0 * 100_000).rounded()), period: 100_000) }
    }
    /// A device node to create in the container.
    public struct Device: Codable, Sendable, Hashable {
        /// Its path in the container (Plugboard uses the host's).
        public var path: String
        /// `c` (character) or `b` (block).
        public var type: String
        /// Its major number.
        public var major: Int64
        /// Its minor number.
        public var minor: Int64
        /// Its permission bits.
        public var fileMode: UInt32
        /// Its owner.
        public var uid: UInt32
        /// Its group.
        public var gid: UInt32
    }
    /// The Linux-specific part: namespaces, device access, and hidden and read-only paths.
    public struct Linux: Codable, Sendable, Hashable {
        /// The namespaces the container gets its own of.
        public var namespaces: [Namespace]
        /// Its cgroup resources (device access).
        public var resources: Resources
        /// Device nodes to create; nil for none.
        public var devices: [Device]?
        /// Paths hidden from the container.
        public var maskedPaths: [String]
        /// Paths the container sees read-only.
        public var readonlyPaths: [String]
    }

    /// The spec version written.
    public var ociVersion = "1.0.2"
    /// The process to run.
    public var process: Process
    /// The root filesystem.
    public var root: Root
    /// The container's hostname.
    public var hostname: String
    /// Its mounts, in order.
    public var mounts: [Mount]
    /// The Linux-specific settings.
    public var linux: Linux
    /// Labels for tools (`io.plugboard.plugin`, `io.plugboard.container`, …); nil for none.
    public var annotations: [String: String]?

    /// The capabilities runc's own default spec keeps; ordinary containers get these.
    public static let defaultCapabilities = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    static let defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// A spec with Plugboard's defaults.
    ///
    /// - Parameters:
    ///   - rootfs: an absolute path; mounted read-only.
    ///   - hostNetwork: share the host's network namespace instead of a private one.
    ///   - binds: host directories to bind in, as granted.
    ///   - devices: host device nodes to make available, as granted.
    public static func make(
        rootfs: String, args: [String], env: [String], cwd: String, hostname: String,
        capabilities: [String], hostNetwork: Bool = false,
        binds: [(source: String, destination: String, readonly: Bool)] = [],
        devices: [String] = [], annotations: [String: String] = [:]
    ) throws -> OCISpec {
        var environment = env
        if !environment.contains(where: { $0.hasPrefix("PATH=") }) { environment.insert(defaultPath, at: 0) }
        let caps = capabilities
        var namespaces = ["pid", "ipc", "uts", "mount", "cgroup"].map(Namespace.init(type:))
        if !hostNetwork { namespaces.append(Namespace(type: "network")) }
        var mounts = [
            Mount(destination: "/proc", type: "proc", source: "proc", options: nil),
            Mount(destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"]),
            Mount(destination: "/dev/pts", type: "devpts", source: "devpts", options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            Mount(destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            Mount(destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"]),
            Mount(destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"]),
            // The rootfs is read-only; a private /tmp gives programs somewhere to write.
            Mount(destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid", "nodev", "mode=1777", "size=65536k"]),
        ]
        for b in binds {
            mounts.append(Mount(destination: b.destination, type: "bind", source: b.source, options: ["rbind", "nosuid", "nodev", b.readonly ? "ro" : "rw"]))
        }
        var rules = [DeviceRule(allow: false, type: nil, major: nil, minor: nil, access: "rwm")]
        var nodes: [Device] = []
        for path in devices {
            var info = stat()
            guard stat(path, &info) == 0 else { throw ContainerError(.badSpec, "device \(path) does not exist on this host") }
            let kind: String
            switch info.st_mode & S_IFMT {
            case S_IFCHR: kind = "c"
            case S_IFBLK: kind = "b"
            default: throw ContainerError(.badSpec, "\(path) is not a device node")
            }
            // glibc's gnu_dev_major/minor are macros Swift does not import; this is their definition.
            let dev = UInt64(info.st_rdev)
            let major = Int64(((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)))
            let minor = Int64((dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)))
            nodes.append(Device(path: path, type: kind, major: major, minor: minor, fileMode: info.st_mode & 0o777, uid: 0, gid: 0))
            rules.append(DeviceRule(allow: true, type: kind, major: major, minor: minor, access: "rwm"))
        }
        return OCISpec(
            process: Process(
                terminal: false, user: User(uid: 0, gid: 0), args: args, env: environment, cwd: cwd,
                capabilities: Capabilities(bounding: caps, effective: caps, permitted: caps, ambient: caps),
                rlimits: [RLimit(type: "RLIMIT_NOFILE", hard: 1024, soft: 1024)], noNewPrivileges: true
            ),
            root: Root(path: rootfs, readonly: true),
            hostname: hostname,
            mounts: mounts,
            linux: Linux(
                namespaces: namespaces, resources: Resources(devices: rules), devices: nodes.isEmpty ? nil : nodes,
                maskedPaths: [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
                ],
                readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            ),
            annotations: annotations.isEmpty ? nil : annotations
        )
    }

    /// The spec for a container plugin, from its manifest and what was granted to it.
    public static func forPlugin(
        name: String, bundle: String, manifest: PluginManifest, granted: [Privilege], environment: [String: String]
    ) throws -> OCISpec {
        var env = manifest.env ?? []
        for (k, v) in environment.sorted(by: { $0.key < $1.key }) { env.append("\(k)=\(v)") }
        var binds: [(String, String, Bool)] = []
        var caps: [String] = []
        var devices: [String] = []
        var hostNetwork = false
        for p in granted {
            switch p {
            case .hostNetwork: hostNetwork = true
            case .mount(let s, let d, let ro): binds.append((s, d, ro))
            case .capability(let c): caps.append(c)
            case .device(let d): devices.append(d)
            }
        }
        // runc refuses a rootfs path that is a symlink: give it the real directory.
        let rootfs = URL(fileURLWithPath: bundle + "/rootfs").resolvingSymlinksInPath().path
        return try make(
            rootfs: rootfs, args: manifest.entrypoint, env: env, cwd: manifest.workdir ?? "/", hostname: name,
            capabilities: caps, hostNetwork: hostNetwork, binds: binds, devices: devices,
            annotations: ["io.plugboard.plugin": name]
        )
    }

    /// Writes the spec as `DIRECTORY/config.json` (creating the directory), for `runc --bundle`.
    public func write(toBundle directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(self).write(to: URL(fileURLWithPath: directory + "/config.json"), options: .atomic)
    }
}
