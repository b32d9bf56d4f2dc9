import Chan
import Containers
import Foundation
import Hooks
import NIOConcurrencyHelpers
import Logging
import Pipeline
import PluginKit
import Routing

/// `containers`: the container lifecycle on runc, as a built-in plugin.
///
/// Jobs container.create, .start, .stop, .rm, .ls, .inspect, .logs, .wait. A create runs
/// the `container.create` hook chain over the spec (mounts, env, args, hostname, labels),
/// with attribution and conflict detection; a start runs the `container.start` hooks (they
/// may veto). Observers hear container.started, container.exited (with the exit code) and
/// container.removed. See docs/CONTAINERS.md.
public struct ContainersPlugin: Plugin {
    /// The lifecycle this plugin serves.
    public let manager: ContainerManager
    /// Lifecycle notifications, in order, for the observers of container.started/exited/removed.
    private let notifications: AsyncStream<Notification>
    /// Tells the observers, one notification at a time; started at the first declaration
    /// that has an engine, cancelled when the plugin stops.
    private let notifier = NIOLockedValueBox<Task<Void, Never>?>(nil)
    private let logger: Logger
    /// The volumes each container has mounted, by container id, to unmount at rm.
    private let mountedVolumes = NIOLockedValueBox<[String: [VolumeBinder.Mounted]]>([:])

    struct Notification: Sendable {
        let event: String
        let payload: Value
        let object: String
    }

    /// The hook chains this plugin runs and the notifications it sends; a subprocess or
    /// container instance must be granted them (`hooks.run:EVENT`).
    public static let hookEvents = ["container.create", "container.start", "container.started", "container.exited", "container.removed"]

    /// The pipeline message each line of a container's output becomes:
    /// `{"id", "stream": "stdout"|"stderr", "line", "time"}`.
    public static let logMessageType = "container.log"

    /// Sends each output line through the pipeline as a `container.log` message; the
    /// `container.log` messages that come out are what the log keeps (a plugin may mask,
    /// drop or add lines). A failing pipeline keeps the line as written, and says so in the
    /// daemon's log: no line is lost to a broken plugin.
    static func logFilter(engine: any EngineCalls, logger: Logger) -> LogLineFilter {
        { id, stream, line in
            let time = Date().formatted(.iso8601)
            let body: Value = .fields(("id", .string(id)), ("stream", .string(stream.rawValue)), ("line", .string(line)), ("time", .string(time)))
            do {
                let run = try await engine.send(logMessageType, body)
                return run.final.filter { $0.type == logMessageType }.map { $0.body["line"]?.stringValue ?? "\($0.body)" }
            } catch {
                logger.warning("container log line kept unfiltered", metadata: ["container.id": "\(id)", "container.error": "\(error)"])
                return [line]
            }
        }
    }

    /// - Parameters:
    ///   - runc: the runtime, with Plugboard's own `--root`.
    ///   - bundles: where the generated OCI bundles go.
    public init(runc: Runc, bundles: String, logger: Logger) {
        let (notifications, continuation) = AsyncStream.makeStream(of: Notification.self)
        self.notifications = notifications
        self.logger = logger
        manager = ContainerManager(runc: runc, bundles: bundles, logger: logger) { event in
            switch event {
            case .started(let id, let name):
                continuation.yield(Notification(event: "container.started", payload: .fields(("id", .string(id)), ("name", .string(name))), object: id))
            case .exited(let id, let name, let code):
                continuation.yield(Notification(event: "container.exited", payload: .fields(("id", .string(id)), ("name", .string(name)), ("exit_code", .int(Int64(code)))), object: id))
            case .removed(let id, let name):
                continuation.yield(Notification(event: "container.removed", payload: .fields(("id", .string(id)), ("name", .string(name))), object: id))
            }
        }
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "containers", version: "1.0.0")
        for event in Self.hookEvents { d.runsHooks(event) }
        d.sendsMessages(Self.logMessageType)
        d.calls.append(VolumeBinder.point)
        if let engine = context.engine {
            manager.setLogFilter(Self.logFilter(engine: engine, logger: logger))
            let (notifications, logger) = (self.notifications, self.logger)
            notifier.withLockedValue { task in
                guard task == nil else { return }
                task = Task {
                    for await n in notifications {
                        do {
                            try await engine.notify(n.event, payload: n.payload, object: n.object)
                        } catch {
                            logger.warning("observers not told", metadata: ["container.event": "\(n.event)", "container.id": "\(n.object)", "container.error": "\(error)"])
                        }
                    }
                }
            }
        }
        let notifier = self.notifier
        d.onStop = { notifier.withLockedValue { $0 }?.cancel() }
        let manager = self.manager
        let hooks = HookRunner(engine: context.engine)
        let volumes = VolumeBinder(engine: context.engine, mounted: mountedVolumes)
        d.job("container.create") { try await Self.create($0, manager: manager, hooks: hooks, volumes: volumes) }
        d.job("container.start") { argument in
            let r = try await manager.inspect(try Self.ref(argument))
            var payload = r.spec.value
            if case .map(var entries) = payload {
                entries.insert((key: "id", value: .string(r.id)), at: 0)
                payload = .map(entries)
            }
            // The start hooks may veto; the spec itself was settled at create.
            _ = try await hooks.run("container.start", payload: payload, object: r.id)
            let started = try await manager.start(r.id)
            return .fields(("id", .string(started.id)), ("name", .string(started.name)), ("state", .string(started.state.rawValue)))
        }
        d.job("container.stop") { argument in
            let grace = Duration.clampedMilliseconds(argument["timeout_ms"]?.intValue, default: .seconds(10))
            let ref = try Self.ref(argument)
            let code = try await manager.stop(ref, grace: grace)
            let r = try await manager.inspect(ref)
            return .fields(("id", .string(r.id)), ("name", .string(r.name)), ("exit_code", code.map { .int(Int64($0)) } ?? .nil))
        }
        d.job("container.rm") { argument in
            let ref = try Self.ref(argument)
            let r = try await manager.inspect(ref)
            try await manager.remove(ref, force: argument["force"]?.boolValue ?? false)
            await volumes.unmountAll(container: r.id)
            return .fields(("id", .string(r.id)), ("name", .string(r.name)), ("removed", true))
        }
        d.job("container.ls") { _ in
            .array(await manager.list().map(Self.summary))
        }
        d.job("container.inspect") { argument in
            let ref = try Self.ref(argument)
            let r = try await manager.inspect(ref)
            let pid = try await manager.pid(ref)
            return Self.details(r, pid: pid)
        }
        d.job("container.logs") { argument in
            let log = try await manager.log(try Self.ref(argument))
            guard argument["follow"]?.boolValue == true else {
                return .fields(("chunks", .array(log.kept.map { .fields(("stream", .string($0.stream.rawValue)), ("data", .binary($0.bytes))) })))
            }
            guard case .channel(.byteStreamWriter(let stdout))? = argument["stdout"] else {
                throw ContainerError(.badSpec, "container.logs with follow needs a byte stream in \"stdout\" (and optionally \"stderr\")")
            }
            var stderr: ByteStreamWriter?
            if case .channel(.byteStreamWriter(let w))? = argument["stderr"] { stderr = w }
            Self.pump(log, stdout: stdout, stderr: stderr)
            return "following"
        }
        d.job("container.wait") { argument in
            let ref = try Self.ref(argument)
            let timeout = Duration.clampedMilliseconds(argument["timeout_ms"]?.intValue, default: .seconds(3600))
            guard let code = try await manager.wait(ref, timeout: timeout) else {
                throw ContainerError(.wrongState, "container \(ref) was still running after \(timeout)")
            }
            return .fields(("id", .string(ref)), ("exit_code", .int(Int64(code))))
        }
        d.onStop = { await manager.shutdown(grace: .seconds(2)) }
        return d
    }

    static func ref(_ argument: Value) throws -> String {
        guard let s = argument["id"]?.stringValue ?? argument.stringValue else {
            throw ContainerError(.badSpec, "name the container: {\"id\": ID or NAME}")
        }
        return s
    }

    static func create(_ argument: Value, manager: ContainerManager, hooks: HookRunner, volumes: VolumeBinder) async throws -> Value {
        let id = ContainerManager.newID()
        guard case .map(var entries) = argument else { throw ContainerError(.badSpec, "container.create takes a spec map (see docs/CONTAINERS.md)") }
        // Volumes become bind mounts of the paths their drivers answer, before the hooks see the spec.
        if let requested = argument["volumes"], requested != .nil {
            entries.removeAll { $0.key == "volumes" }
            let mounts = try await volumes.mount(requested, container: id)
            var existing = argument["mounts"]?.arrayValue ?? []
            existing.append(contentsOf: mounts)
            entries.removeAll { $0.key == "mounts" }
            entries.append((key: "mounts", value: .array(existing)))
        }
        if argument["name"] == nil || argument["name"] == .nil {
            entries.removeAll { $0.key == "name" }
            entries.append((key: "name", value: .string(id)))
        }
        let requested = try ContainerSpec(value: .map(entries), context: "the request")
        guard await manager.isNameFree(requested.name) else { throw ContainerError(.nameInUse, "a container named \(requested.name) already exists") }
        let outcome = try await hooks.run("container.create", payload: requested.value, object: id)
        let byWhom = outcome.steps.map(\.plugin).joined(separator: ", ")
        let spec = try ContainerSpec(value: outcome.payload, context: "after the container.create hooks" + (byWhom.isEmpty ? "" : " of \(byWhom)"))
        let r = try await manager.create(
            id: id, spec: spec, attribution: outcome.attribution,
            changes: outcome.steps.map { ($0.plugin, $0.changed) }, skipped: outcome.skipped
        )
        return .fields(("id", .string(r.id)), ("name", .string(r.name)), ("attribution", outcome.attributionValue))
    }

    static func summary(_ r: ContainerRecord) -> Value {
        .fields(
            ("id", .string(r.id)), ("name", .string(r.name)), ("state", .string(r.state.rawValue)),
            ("exit_code", r.exitCode.map { .int(Int64($0)) } ?? .nil),
            ("command", .string(r.spec.args.joined(separator: " "))), ("rootfs", .string(r.spec.rootfs)),
            ("created", .string(ISO8601DateFormatter().string(from: r.created)))
        )
    }

    static func details(_ r: ContainerRecord, pid: pid_t?) -> Value {
        let formatter = ISO8601DateFormatter()
        return .fields(
            ("id", .string(r.id)), ("name", .string(r.name)), ("state", .string(r.state.rawValue)),
            ("pid", pid.map { .int(Int64($0)) } ?? .nil),
            ("exit_code", r.exitCode.map { .int(Int64($0)) } ?? .nil),
            ("created", .string(formatter.string(from: r.created))),
            ("started", r.started.map { .string(formatter.string(from: $0)) } ?? .nil),
            ("finished", r.finished.map { .string(formatter.string(from: $0)) } ?? .nil),
            ("spec", r.spec.value),
            ("changed_by", .map(r.attribution.keys.sorted().map { (key: .string($0), value: .string(r.attribution[$0] ?? "")) })),
            ("hooks", .array(r.changes.map { .fields(("plugin", .string($0.plugin)), ("changed", .array($0.fields.map { .string($0) }))) })),
            ("skipped_hooks", .array(r.skipped.map { .fields(("plugin", .string($0.plugin)), ("reason", .string($0.reason))) }))
        )
    }

    /// Copies a log to byte streams until the container exits; a follower that fell behind
    /// has its streams reset with a reason instead of an ordinary end.
    static func pump(_ log: ContainerLog, stdout: ByteStreamWriter, stderr: ByteStreamWriter?) {
        let (chunks, lagged) = log.follow()
        // Owned by the reader's session: a reader that goes away ends the copy.
        stdout.owningSession.tasks.run {
            for await chunk in chunks {
                do {
                    try await (chunk.stream == .stderr ? (stderr ?? stdout) : stdout).write(chunk.bytes)
                } catch {
                    return  // the reader went away
                }
            }
            if lagged() {
                let reason = "the reader fell more than \(ContainerLog.followerBacklog) chunks behind; what it missed is in container logs"
                stdout.reset(reason: reason)
                stderr?.reset(reason: reason)
            } else {
                stdout.close()
                stderr?.close()
            }
        }
    }
}

/// The hook chains the containers plugin runs, through the engine it was declared with.
struct HookRunner: Sendable {
    let engine: (any EngineCalls)?

    func run(_ event: String, payload: Value, object: String) async throws -> HookOutcome {
        guard let engine else {
            throw ContainerError(.badSpec, "the containers plugin runs no \(event) hooks before it is connected to the engine")
        }
        return try await engine.runHooks(event, payload: payload, object: object)
    }
}

/// Volumes for containers: Docker's VolumeDriver idea over the `volume.driver` extension
/// point. A spec's `"volumes": [{"name", "destination", "driver"?, "readonly"?}]` asks the
/// named driver plugin — or the best provider of `volume.driver` — to mount each volume,
/// and binds the path it answers at `destination`.
struct VolumeBinder: Sendable {
    /// The extension point volume drivers provide.
    static let point = "volume.driver"

    /// A volume a container has mounted, and who mounted it.
    struct Mounted: Sendable {
        let name: String
        let driver: String?
    }

    let engine: (any EngineCalls)?
    let mounted: NIOLockedValueBox<[String: [Mounted]]>

    /// Mounts each requested volume and returns the bind mounts for the spec.
    func mount(_ requested: Value, container id: String) async throws -> [Value] {
        guard let list = requested.arrayValue else { throw ContainerError(.badSpec, "\"volumes\" must be a list of {name, destination, driver?, readonly?}") }
        guard let engine else { throw ContainerError(.badSpec, "volumes need the engine: the containers plugin is not connected yet") }
        var mounts: [Value] = []
        for (i, v) in list.enumerated() {
            guard let name = v["name"]?.stringValue, let destination = v["destination"]?.stringValue, destination.hasPrefix("/") else {
                throw ContainerError(.badSpec, "volumes[\(i)] needs a \"name\" and an absolute \"destination\"")
            }
            let driver = v["driver"]?.stringValue
            let request: Value = .fields(("op", "mount"), ("name", .string(name)), ("container", .string(id)))
            let answer: Value
            do {
                if let driver {
                    answer = try await engine.callProvider(Self.point, provider: driver, request, timeout: .seconds(30))
                } else {
                    answer = try await engine.callBest(Self.point, request, timeout: .seconds(30))
                }
            } catch let error as ChanError {
                throw ContainerError(.badSpec, "volume \(name): \(error.reason)")
            } catch let error as RoutingError {
                throw ContainerError(.badSpec, "volume \(name): \(error.reason)")
            }
            guard let path = answer["path"]?.stringValue, path.hasPrefix("/") else {
                throw ContainerError(.badSpec, "volume \(name): the driver answered no absolute \"path\": \(answer)")
            }
            mounted.withLockedValue { $0[id, default: []].append(Mounted(name: name, driver: driver)) }
            let readonly = v["readonly"]?.boolValue ?? false
            mounts.append(.fields(
                ("source", .string(path)), ("destination", .string(destination)), ("type", "bind"),
                ("options", .array(["rbind", readonly ? "ro" : "rw"]))
            ))
        }
        return mounts
    }

    /// Tells each volume's driver that the container no longer uses it.
    func unmountAll(container id: String) async {
        guard let engine else { return }
        let volumes = mounted.withLockedValue { $0.removeValue(forKey: id) } ?? []
        for v in volumes {
            let request: Value = .fields(("op", "unmount"), ("name", .string(v.name)), ("container", .string(id)))
            if let driver = v.driver {
                _ = try? await engine.callProvider(Self.point, provider: driver, request, timeout: .seconds(30))
            } else {
                _ = try? await engine.callBest(Self.point, request, timeout: .seconds(30))
            }
        }
    }
}
