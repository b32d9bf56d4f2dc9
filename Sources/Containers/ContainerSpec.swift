import Chan
import Foundation

/// What a container is made from: the payload of the `container.create` hook chain.
///
/// On the wire (and to hooks) it is a map:
/// `{"name", "rootfs", "args": [..], "env": ["K=V"], "hostname", "workdir",
///   "labels": {K: V}, "mounts": [{"source", "destination", "type", "options": [..]}]}`.
/// Hooks may change any field; the result is checked again before anything runs.
public struct ContainerSpec: Sendable, Hashable {
    /// A mount into the container (a bind mount by default).
    public struct Mount: Sendable, Hashable {
        /// What is mounted: a host path, for a bind mount.
        public var source: String
        /// Where it appears inside the container (absolute).
        public var destination: String
        /// The mount type (default "bind").
        public var type: String
        /// Mount options (default `rbind`, `rw`).
        public var options: [String]

        /// A mount of `source` at `destination`; by default a read-write bind mount.
        public init(source: String, destination: String, type: String = "bind", options: [String] = ["rbind", "rw"]) {
            self.source = source
            self.destination = destination
            self.type = type
            self.options = options
        }
    }

    /// The container's name: letters, digits, '.', '_' and '-', at most 64.
    public var name: String
    /// The root filesystem: an absolute path to a host directory.
    public var rootfs: String
    /// The command and its arguments; never empty.
    public var args: [String]
    /// The environment, as `KEY=VALUE` entries (a default `PATH` is added when missing).
    public var env: [String]
    /// The hostname inside the container (default: the name).
    public var hostname: String
    /// The working directory inside the container (default "/").
    public var workdir: String
    /// Labels, written into the OCI spec's annotations.
    public var labels: [String: String]
    /// Mounts beyond the defaults every container gets.
    public var mounts: [Mount]

    /// A spec; `hostname` defaults to `name`. Unlike ``init(value:context:)``, it checks nothing.
    public init(
        name: String, rootfs: String, args: [String], env: [String] = [], hostname: String? = nil,
        workdir: String = "/", labels: [String: String] = [:], mounts: [Mount] = []
    ) {
        self.name = name
        self.rootfs = rootfs
        self.args = args
        self.env = env
        self.hostname = hostname ?? name
        self.workdir = workdir
        self.labels = labels
        self.mounts = mounts
    }

    /// The map hooks see.
    public var value: Value {
        .fields(
            ("name", .string(name)),
            ("rootfs", .string(rootfs)),
            ("args", .array(args.map { .string($0) })),
            ("env", .array(env.map { .string($0) })),
            ("hostname", .string(hostname)),
            ("workdir", .string(workdir)),
            ("labels", .map(labels.keys.sorted().map { (key: .string($0), value: .string(labels[$0] ?? "")) })),
            ("mounts", .array(mounts.map {
                .fields(("source", .string($0.source)), ("destination", .string($0.destination)), ("type", .string($0.type)),
                        ("options", .array($0.options.map { .string($0) })))
            }))
        )
    }

    /// Reads and checks a spec map; `context` says where it came from in errors
    /// ("the request", "after the container.create hooks").
    public init(value v: Value, context: String) throws {
        func fail(_ what: String) -> ContainerError { ContainerError(.badSpec, "container spec (\(context)): \(what)") }
        func string(_ key: String, default d: String? = nil) throws -> String {
            guard let item = v[key], item != .nil else {
                if let d { return d }
                throw fail("\"\(key)\" is missing")
            }
            guard let s = item.stringValue else { throw fail("\"\(key)\" must be a string") }
            return s
        }
        func strings(_ key: String) throws -> [String] {
            guard let item = v[key], item != .nil else { return [] }
            guard let a = item.arrayValue else { throw fail("\"\(key)\" must be a list of strings") }
            return try a.map { guard let s = $0.stringValue else { throw fail("\"\(key)\" must hold strings only") }; return s }
        }
        guard case .map = v else { throw fail("it must be a map") }
        name = try string("name")
        rootfs = try string("rootfs")
        args = try strings("args")
        env = try strings("env")
        hostname = try string("hostname", default: name)
        workdir = try string("workdir", default: "/")
        labels = [:]
        for entry in v["labels"]?.mapValue ?? [] {
            guard let k = entry.key.stringValue, let value = entry.value.stringValue else { throw fail("\"labels\" must map strings to strings") }
            labels[k] = value
        }
        mounts = try (v["mounts"]?.arrayValue ?? []).enumerated().map { i, m in
            guard let source = m["source"]?.stringValue, let destination = m["destination"]?.stringValue else {
                throw fail("mounts[\(i)] needs \"source\" and \"destination\"")
            }
            guard destination.hasPrefix("/") else { throw fail("mounts[\(i)].destination must be an absolute path, not \(destination)") }
            let options = (m["options"]?.arrayValue ?? []).compactMap(\.stringValue)
            return Mount(source: source, destination: destination, type: m["type"]?.stringValue ?? "bind", options: options.isEmpty ? ["rbind", "rw"] : options)
        }
        guard !args.isEmpty else { throw fail("\"args\" is empty: give the command to run") }
        guard rootfs.hasPrefix("/") else { throw fail("\"rootfs\" must be an absolute path, not \(rootfs)") }
        for e in env where !e.contains("=") { throw fail("env entry \"\(e)\" is not KEY=VALUE") }
        guard Self.isValidName(name) else { throw fail("name \"\(name)\" may hold only letters, digits, '.', '_' and '-'") }
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "_" || $0 == "-") }
    }

    /// The OCI spec runc is given for this container.
    func ociSpec(id: String) throws -> OCISpec {
        var spec = try OCISpec.make(
            // runc refuses a rootfs path that is a symlink: give it the real directory.
            rootfs: URL(fileURLWithPath: rootfs).resolvingSymlinksInPath().path, args: args, env: env, cwd: workdir, hostname: hostname,
            capabilities: OCISpec.defaultCapabilities,
            annotations: labels.merging(["io.plugboard.container": id]) { a, _ in a }
        )
        // Bind mounts as the spec says (the hooks' choice of options included).
        for m in mounts {
            spec.mounts.append(OCISpec.Mount(destination: m.destination, type: m.type, source: m.source, options: m.options))
        }
        return spec
    }
}
