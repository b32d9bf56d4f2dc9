#if canImport(Glibc)
import Glibc
#endif
import Chan
import Containers
import CoreMetrics
import Foundation
import Logging
import PluginKit
import Routing
import Spawn

/// Keeps one plugin alive: starts it through its launcher, registers what it declared,
/// watches it, and on an end withdraws it and asks its ``RestartHistory`` what follows —
/// a restart after a backoff, or a final state.
///
/// Tasks: the monitor (one per supervisor, from activation until stop) and, per run, the
/// server for the plugin's engine calls and its output readers. Each is held here and
/// cancelled or awaited when its run or the supervisor ends.
actor PluginSupervisor {
    var spec: PluginSpec
    private(set) var name: String
    private(set) var state: PluginState = .starting
    private(set) var restarts = 0
    /// Every end and the backoff attempt; the restart decision.
    private(set) var history = RestartHistory()
    private(set) var description: PluginDescription?
    private var current: LaunchedPlugin?
    private var callServer: Task<Void, Never>?
    private var stopping = false
    private var monitor: Task<Void, Never>?
    private var activeSince: ContinuousClock.Instant?
    /// Container privileges granted after launch (`plugboard plugin grant NAME network=host`).
    var extraPrivileges: Set<Privilege> = []
    private let launcher: any PluginLauncher
    let engine: EngineParts
    private let logger: Logger

    /// Operator overrides of hook priorities and timeouts, by event (`plugboard plugin set`).
    var hookOverrides: [String: (priority: Int?, timeout: Duration?)] = [:]
    /// Operator overrides of pipeline priorities, by message type.
    var pipelineOverrides: [String: Int] = [:]

    /// Jobs granted beyond the launch-time grant (`plugboard plugin grant`).
    var extraGrants: Set<String> = []

    init(spec: PluginSpec, provisionalName: String, engine: EngineParts) {
        self.spec = spec
        self.name = provisionalName
        self.engine = engine
        self.launcher = spec.kind.makeLauncher(engine: engine)
        var logger = engine.logger
        logger[metadataKey: "plugin.name"] = "\(provisionalName)"
        self.logger = logger
    }

    /// The process id of the current run, for exec and container plugins.
    var pid: pid_t? { current?.process?.process.pid }

    /// The runc id of a container plugin's container, while it may exist.
    var containerID: String? { get async { await launcher.containerID } }

    var status: PluginStatus {
        let uptime: Double? = (state == .active ? activeSince : nil).map { since in
            let d = ContinuousClock.now - since
            return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        }
        return PluginStatus(name: name, kind: spec.kindName, state: state, pid: pid, restarts: restarts, description: description, uptime: uptime)
    }

    private func set(_ newState: PluginState, _ detail: String = "") {
        state = newState
        engine.emit(EngineEvent(plugin: name, state: newState, restarts: restarts, detail: detail))
    }

    // MARK: Starting

    /// Starts the plugin and waits for its declaration; does not register it yet.
    func launch() async throws -> PluginDescription {
        let request = LaunchRequest(name: name, nameIsKnown: spec.name != nil || restarts > 0, spec: spec, restarts: restarts, extraPrivileges: extraPrivileges)
        let launched = try await launcher.launch(request)
        if !request.nameIsKnown { name = launched.description.name }
        current = launched
        description = launched.description
        if let run = launched.process {
            let server = EngineCallServer(
                session: run.session, caller: name, asked: Set(launched.description.calls), engine: engine,
                isGranted: { [weak self] job in await self?.isGranted(job) == true }
            )
            callServer = Task { await server.serve() }
        }
        return launched.description
    }

    /// Registers the plugin's jobs, hooks and pipeline types; it is active from then on.
    func activate() throws {
        guard let description, let participant = current?.participant else { throw EngineError(.startFailed, "plugin \(name) was not started") }
        try engine.hub.register(jobs: description.jobs, for: participant)
        for provided in description.provides {
            engine.hub.provide(provided.point, priority: provided.priority, by: participant)
        }
        if spec.openToAll { engine.openJobs.withLockedValue { $0.formUnion(description.jobs) } }
        registerHooksAndPipeline()
        engine.publish("registration.added", [
            ("plugin", .string(name)), ("jobs", .array(description.jobs.map { .string($0) })),
            ("hooks", .array(description.hooks.map { .string("\($0.event) (\($0.phase.rawValue))") })),
            ("pipeline", .array(description.messageTypes.map { .string($0.type) })),
        ])
        activeSince = .now
        set(.active, "registered \(description.jobs.count) jobs, \(description.provides.count) extension points, \(description.hooks.count) hooks, \(description.messageTypes.count) pipeline types")
        if current?.process != nil, monitor == nil {
            monitor = Task { await self.superviseUntilStopped() }
        }
    }

    /// Registers the declared hooks and pipeline types, with the operator's overrides.
    func registerHooksAndPipeline() {
        guard let description, let participant = current?.participant else { return }
        for hook in description.hooks {
            let o = hookOverrides[hook.event]
            engine.hooks.register(
                hook.event, phase: hook.phase, priority: o?.priority ?? hook.priority, timeout: o?.timeout ?? hook.timeout,
                policy: hook.policy, overrides: hook.overrides, by: participant
            )
        }
        for m in description.messageTypes {
            engine.pipeline.register(type: m.type, priority: pipelineOverrides[m.type] ?? m.priority, timeout: m.timeout, policy: m.policy, by: participant)
        }
    }

    // MARK: Supervision

    /// Waits for the run to end — its process exits or its session closes, whichever comes
    /// first — ends the other, and says why, as a type.
    private static func waitForEnd(_ run: PluginProcessRun) async -> PluginEndReason {
        enum Event: Sendable {
            case exited(ExitStatus)
            case sessionClosed(ChanError)
            case escalated
        }
        let process = run.process
        let session = run.session
        return await withTaskGroup(of: Event.self) { group in
            group.addTask { .exited(await process.waitForExit()) }
            group.addTask { .sessionClosed(await session.waitUntilClosed()) }
            var exit: ExitStatus?
            var violation: String?
            var sessionEnd: String?
            var exitCameFirst: Bool?
            for await event in group {
                let isFirst = exitCameFirst == nil
                switch event {
                case .exited(let status):
                    exit = status
                    if isFirst { exitCameFirst = true }
                case .sessionClosed(let error):
                    if error.code == .protocolViolation { violation = error.reason } else { sessionEnd = error.reason }
                    if isFirst { exitCameFirst = false }
                case .escalated:
                    continue
                }
                guard isFirst else { continue }
                // Whichever came first, end the other: a plugin whose session ended is stopped.
                session.close(reason: "plugin ended")
                if exit == nil, process.exitStatus == nil {
                    process.signal(SIGTERM)
                    group.addTask {
                        if await process.waitForExit(timeout: .seconds(2)) == nil { process.signal(SIGKILL) }
                        return .escalated
                    }
                }
            }
            // A plugin cut off for breaking the protocol may exit 0 before that is reported
            // here: the violation is the reason whichever arrived first, so that it is
            // restarted, not taken for a clean exit.
            if let violation { return .protocolViolation(violation, then: exit) }
            if exitCameFirst == true, let exit { return PluginEndReason(exit) }
            return .sessionEnded(sessionEnd ?? "closed", then: exit)
        }
    }

    /// Ends the current run's own tasks (engine calls, output) and cleans up after it.
    private func endRun() async {
        callServer?.cancel()
        callServer = nil
        current?.process?.output.cancel()
        await launcher.cleanUp()
    }

    private func superviseUntilStopped() async {
        var failedStart: PluginEndReason?
        while true {
            let reason: PluginEndReason
            if let failedStart {
                reason = failedStart
            } else if let run = current?.process {
                reason = await Self.waitForEnd(run)
            } else {
                return
            }
            failedStart = nil
            if stopping { return }
            await endRun()
            let decision = history.decide(
                after: reason, policy: spec.restartPolicy, backoff: spec.backoff, crashLoop: spec.crashLoop,
                activeSince: activeSince, now: .now
            )
            if reason.isProtocolViolation { Counter(label: "plugboard_frame_errors_total", dimensions: [("plugin", name)]).increment() }
            logger.warning("plugin ended", metadata: ["plugin.reason": "\(reason)", "plugin.end": "\(reason.kind)", "plugin.decision": "\(decision)"])
            let delay: Duration
            switch decision {
            case .stay(let final, let why):
                switch why {
                case .policy: withdraw(reason: "\(why)", expectBack: nil)
                case .crashLoop: withdraw(reason: "failed (\(why))", expectBack: nil)
                }
                set(final, "\(why)")
                return
            case .restart(let after):
                delay = after
            }
            withdraw(reason: "\(reason)", expectBack: delay + spec.startTimeout)
            set(.restarting, "\(reason); restarting in \(delay.short)")
            do {
                try await engine.clock.sleep(for: delay)
            } catch {
                return  // stop() cancelled the monitor
            }
            if stopping { return }
            restarts += 1
            Counter(label: "plugboard_plugin_restarts_total", dimensions: [("plugin", name)]).increment()
            do {
                _ = try await launch()
                try activate()
            } catch {
                logger.warning("restart failed", metadata: ["plugin.error": "\(error)"])
                // A failed start counts as an end: the history decides again at once.
                if let e = error as? EngineError, e.code == .daemonOutOfResources {
                    failedStart = .daemonOutOfResources(e.reason)
                } else {
                    failedStart = .startFailed("\(error)")
                }
            }
        }
    }

    /// Starts the plugin again now, whatever its state; clears a crash loop (`plugboard plugin restart`).
    func restartNow(grace: Duration) async throws {
        if state == .active || state == .starting || state == .restarting {
            await stop(grace: grace)
        }
        monitor?.cancel()
        monitor = nil
        stopping = false
        history.clear()
        restarts += 1
        set(.starting, "restart requested")
        _ = try await launch()
        try activate()
    }

    /// Stops the plugin and marks it disabled (`plugboard plugin disable`).
    func disable(grace: Duration) async {
        await stop(grace: grace)
        set(.disabled, "disabled by an operator")
    }

    /// Starts a disabled or stopped plugin again (`plugboard plugin enable`).
    func enable() async throws {
        guard state == .disabled || state == .stopped || state == .failed else { return }
        monitor?.cancel()
        monitor = nil
        stopping = false
        history.clear()
        set(.starting, "enabled by an operator")
        _ = try await launch()
        try activate()
    }

    private func withdraw(reason: String, expectBack: Duration?) {
        engine.publish("registration.withdrawn", [("plugin", .string(name)), ("reason", .string(reason))])
        engine.hub.withdraw(owner: name, reason: reason, expectBackWithin: expectBack)
        engine.hooks.withdraw(owner: name, reason: reason)
        engine.pipeline.withdraw(owner: name, reason: reason)
    }

    // MARK: Stopping

    /// Stops taking calls, lets in-flight calls finish within `grace`, asks the plugin to
    /// stop (GOAWAY), then SIGTERM, then SIGKILL.
    func stop(grace: Duration) async {
        stopping = true
        engine.hub.withdraw(owner: name, reason: "shutting down", expectBackWithin: grace)
        engine.hooks.withdraw(owner: name, reason: "shutting down")
        engine.pipeline.withdraw(owner: name, reason: "shutting down")
        // Wait for the last in-flight call to end (the event itself), but no longer than the grace.
        let calls = engine.hub.inFlight
        let owner = name
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await calls.waitUntilDrained(owner: owner) }
            group.addTask { [clock = engine.clock] in try? await clock.sleep(for: grace) }
            await group.next()
            group.cancelAll()
        }
        engine.hub.withdraw(owner: name, reason: "stopped")
        if let run = current?.process {
            run.session.close(reason: "plugboardd is shutting down")
            if await run.process.waitForExit(timeout: grace) == nil {
                run.process.signal(SIGTERM)
                if await run.process.waitForExit(timeout: grace) == nil {
                    run.process.signal(SIGKILL)
                    _ = await run.process.waitForExit()
                }
            }
        }
        await endRun()
        if let onStop = current?.onStop { await onStop() }
        // The monitor sees `stopping` and returns; wait for it, so that whatever comes next
        // (a restart, an enable) cannot be mistaken by it for a crash.
        if let monitor {
            monitor.cancel()
            await monitor.value
            self.monitor = nil
        }
        set(.stopped, "shut down")
    }
}

extension PluginSpec {
    /// "builtin", "exec" or "container".
    var kindName: String {
        switch kind {
        case .builtin: return "builtin"
        case .exec: return "exec"
        case .container: return "container"
        }
    }
}
