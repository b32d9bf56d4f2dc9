#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import Spawn

/// One container the lifecycle knows.
public struct ContainerRecord: Sendable {
    /// Where it is in its life; an exited container can be started again.
    public enum State: String, Sendable { case created, running, exited }

    /// Its id, which is also its runc id.
    public var id: String
    /// What it is made from, after the container.create hooks.
    public var spec: ContainerSpec
    /// Which plugin set each field in the container.create chain (field path → plugin).
    public var attribution: [String: String]
    /// The mutating hooks that ran, in order, with the fields each changed.
    public var changes: [(plugin: String, fields: [String])]
    /// Optional hooks that failed and were skipped.
    public var skipped: [(plugin: String, reason: String)]
    /// Created, running or exited.
    public var state: State = .created
    /// Its last exit code (128 + N for signal N); nil until it has exited.
    public var exitCode: Int?
    /// When it was created.
    public var created = Date()
    /// When it last started; nil before its first start.
    public var started: Date?
    /// When it last exited; nil while running or before its first run.
    public var finished: Date?
    /// Its name (the spec's).
    public var name: String { spec.name }
}

/// Something that happened to a container; the containers plugin turns these into the
/// container.started / container.exited / container.removed notifications.
public enum ContainerEvent: Sendable, Hashable {
    /// It started running.
    case started(id: String, name: String)
    /// It exited with `exitCode` (128 + N for signal N).
    case exited(id: String, name: String, exitCode: Int)
    /// It was removed.
    case removed(id: String, name: String)
}

/// The container lifecycle on runc: create (write the bundle), start (`runc run`, output
/// kept and followed), stop (`runc kill`, TERM then KILL), wait, rm (and runc's state with it).
///
/// A container exists in runc only while it runs: `runc run` makes it and removes it when
/// its process exits, and ``remove(_:force:)``, ``shutdown(grace:)`` and a crash of the
/// monitor all end with `runc delete --force`, so none is left in runc's list.
public actor ContainerManager {
    private let runc: Runc
    private let bundles: String
    private let logger: Logger
    private let onEvent: @Sendable (ContainerEvent) -> Void
    private var records: [String: ContainerRecord] = [:]
    private var logs: [String: ContainerLog] = [:]
    private var processes: [String: SpawnedProcess] = [:]
    /// Callers of ``wait(_:timeout:)``, by container; outside the actor so that a deadline
    /// (a sweeper callback, not a task) can take one out.
    /// What output lines pass through on their way to the log; nil: straight in.
    private let logFilter = NIOLockedValueBox<LogLineFilter?>(nil)

    /// Routes every line the containers started from now on write through `filter` before
    /// it reaches their logs (the containers plugin sends them into the pipeline).
    public nonisolated func setLogFilter(_ filter: LogLineFilter?) {
        logFilter.withLockedValue { $0 = filter }
    }

    /// One task per running container: it copies the output and reports the exit.
    private let watchers = TaskSet()
    private let waiters = NIOLockedValueBox<[String: [UUID: CheckedContinuation<Int?, Never>]]>([:])

    /// - Parameters:
    ///   - bundles: a directory for the generated OCI bundles (one per container).
    ///   - onEvent: told when a container starts, exits or is removed.
    public init(runc: Runc, bundles: String, logger: Logger, onEvent: @escaping @Sendable (ContainerEvent) -> Void) {
        self.runc = runc
        self.bundles = bundles
        self.logger = logger
        self.onEvent = onEvent
    }

    /// A fresh id: 12 hex digits.
    public static func newID() -> String {
        (0..<6).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    private func record(_ ref: String) throws -> ContainerRecord {
        if let r = records[ref] { return r }
        if let r = records.values.first(where: { $0.name == ref }) { return r }
        throw ContainerError(.unknownContainer, "no container \(ref)" + (records.isEmpty ? " (there are none)" : ""))
    }

    /// Whether `name` is free.
    public func isNameFree(_ name: String) -> Bool {
        !records.values.contains { $0.name == name }
    }

    /// Records a container whose spec went through the container.create hooks, and writes its bundle.
    public func create(id: String, spec: ContainerSpec, attribution: [String: String], changes: [(plugin: String, fields: [String])], skipped: [(plugin: String, reason: String)]) throws -> ContainerRecord {
        guard isNameFree(spec.name) else { throw ContainerError(.nameInUse, "a container named \(spec.name) already exists") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: spec.rootfs, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ContainerError(.badSpec, "rootfs \(spec.rootfs) is not a directory")
        }
        for m in spec.mounts where m.type == "bind" && !FileManager.default.fileExists(atPath: m.source) {
            throw ContainerError(.badSpec, "mount source \(m.source) (for \(m.destination)) does not exist on this host" + (attribution.first { $0.key.hasPrefix("mounts") }.map { "; mounts set by \($0.value)" } ?? ""))
        }
        try spec.ociSpec(id: id).write(toBundle: bundles + "/" + id)
        let r = ContainerRecord(id: id, spec: spec, attribution: attribution, changes: changes, skipped: skipped)
        records[id] = r
        logs[id] = ContainerLog()
        return r
    }

    /// Spec and state of one container.
    public func inspect(_ ref: String) throws -> ContainerRecord { try record(ref) }

    /// Every container, oldest first.
    public func list() -> [ContainerRecord] { records.values.sorted { $0.created < $1.created } }

    /// The host pid of a running container's first process.
    public func pid(_ ref: String) async throws -> pid_t? {
        let r = try record(ref)
        guard r.state == .running else { return nil }
        return await runc.pid(r.id)
    }

    /// Its output log.
    public func log(_ ref: String) throws -> ContainerLog {
        let r = try record(ref)
        guard let log = logs[r.id] else { throw ContainerError(.unknownContainer, "container \(ref) has no log") }
        return log
    }

    /// Starts a created (or exited) container with `runc run`.
    public func start(_ ref: String) async throws -> ContainerRecord {
        var r = try record(ref)
        guard r.state != .running else { throw ContainerError(.wrongState, "container \(r.name) is already running") }
        let id = r.id
        await runc.delete(id)  // a stale entry from an earlier run would make runc refuse the id
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        let (executable, arguments) = runc.runCommand(id: id, bundle: bundles + "/" + id)
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(SpawnOptions(
                executable: executable, arguments: arguments, environment: ProcessInfo.processInfo.environment,
                fileDescriptors: [1: out.writeEnd, 2: err.writeEnd]
            ), logger: logger)
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] { close(fd) }
            throw ContainerError(.runtime, "cannot start runc for container \(r.name): \(error)")
        }
        close(out.writeEnd)
        close(err.writeEnd)
        let log = logs[id] ?? ContainerLog()
        log.reopen()
        logs[id] = log
        processes[id] = process
        r.state = .running
        r.started = Date()
        r.finished = nil
        r.exitCode = nil
        records[id] = r
        onEvent(.started(id: id, name: r.name))
        // With a log filter (the pipeline), output goes through it a line at a time.
        let router = logFilter.withLockedValue { $0 }.map { LogLineRouter(id: id, log: log, filter: $0) }
        let deliver: @Sendable (ContainerLog.Stream, [UInt8]) -> Void = { stream, bytes in
            if let router { router.feed(stream, bytes) } else { log.append(stream, bytes) }
        }
        watchers.run {
            async let o: Void = PipeReader.read(fd: out.readEnd) { deliver(.stdout, $0) }
            async let e: Void = PipeReader.read(fd: err.readEnd) { deliver(.stderr, $0) }
            let status = await process.waitForExit()
            _ = try? await (o, e)
            // Every line is in the log before the exit is reported (container wait, logs).
            await router?.finish()
            await self.exited(id, status: status)
        }
        // Return once runc has the container (or it already ended), as `docker start` does:
        // from then on stop, inspect and runc's list see it. Each check is a runc call, so
        // this waits on runc, not on a timer.
        let deadline = ContinuousClock.now + .seconds(10)
        while process.exitStatus == nil, ContinuousClock.now < deadline {
            if await runc.pid(id) != nil { break }
        }
        return records[id] ?? r
    }

    private func exited(_ id: String, status: ExitStatus) async {
        let code: Int
        switch status {
        case .exited(let c): code = Int(c)
        case .signaled(let s): code = 128 + Int(s)
        }
        // runc run removes the container as it exits; make sure, whatever happened.
        await runc.delete(id)
        processes[id] = nil
        logs[id]?.close()
        guard var r = records[id] else { return }
        r.state = .exited
        r.exitCode = code
        r.finished = Date()
        records[id] = r
        for c in (waiters.withLockedValue { $0.removeValue(forKey: id) } ?? [:]).values { c.resume(returning: code) }
        logger.info("container exited", metadata: ["container.id": "\(id)", "container.name": "\(r.name)", "container.exit_code": "\(code)"])
        onEvent(.exited(id: id, name: r.name, exitCode: code))
    }

    /// The exit code once the container has exited; nil when `timeout` passes first.
    public func wait(_ ref: String, timeout: Duration) async throws -> Int? {
        let r = try record(ref)
        if r.state == .exited { return r.exitCode }
        let id = r.id
        let token = UUID()
        return await withCheckedContinuation { c in
            waiters.withLockedValue { $0[id, default: [:]][token] = c }
            let waiters = self.waiters
            DeadlineSweeper.shared.schedule(in: timeout) {
                waiters.withLockedValue { $0[id]?.removeValue(forKey: token) }?.resume(returning: nil)
            }
        }
    }

    /// Stops a running container: SIGTERM, then SIGKILL after `grace`. Returns its exit code.
    @discardableResult
    public func stop(_ ref: String, grace: Duration) async throws -> Int? {
        let r = try record(ref)
        guard r.state == .running else { return r.exitCode }
        await runc.kill(r.id, signal: "TERM")
        if let code = try await wait(r.id, timeout: grace) { return code }
        await runc.kill(r.id, signal: "KILL")
        if let code = try await wait(r.id, timeout: .seconds(10)) { return code }
        // runc could not kill it: end runc itself, which ends the monitor.
        processes[r.id]?.signal(SIGKILL)
        return try await wait(r.id, timeout: .seconds(10))
    }

    /// Forgets a container and deletes its bundle; a running one only with `force` (it is stopped first).
    public func remove(_ ref: String, force: Bool, grace: Duration = .seconds(2)) async throws {
        let r = try record(ref)
        if r.state == .running {
            guard force else { throw ContainerError(.wrongState, "container \(r.name) is running: stop it first, or remove it with --force") }
            try await stop(r.id, grace: grace)
        }
        await runc.delete(r.id)
        try? FileManager.default.removeItem(atPath: bundles + "/" + r.id)
        records[r.id] = nil
        logs[r.id] = nil
        onEvent(.removed(id: r.id, name: r.name))
    }

    /// Stops and removes every container (plugboardd is shutting down).
    public func shutdown(grace: Duration) async {
        for r in list() {
            try? await remove(r.id, force: true, grace: grace)
        }
    }
}
