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
    var current: LaunchedPlugin?
    var callServer: Task<Void, Never>?
    var stopping = false
    var monitor: Task<Void, Never>?
    var activeSince: ContinuousClock.Instant?
    /// Container privileges granted after launch (`plugboard plugin grant NAME network=host`).
    var extraPrivileges: Set<Privilege> = []
    private let launcher: any PluginLauncher
    let engine: EngineParts
    let logger: Logger

    /// Operator overrides of hook priorities and timeouts, by event (`plugboard plugin set`).
    var hookOverrides: [String: (priority: Int?, timeout: Duration?)] = [:]
    /// Operator overrides of pipeline priorities, by message type.
    var pipelineOverrides: [String: Int] = [:]

    /// Jobs granted beyond the launch-time grant (`plugboard plugin grant`).
    var extraGrants: Set<String> = []

    /// The cgroup its processes live in (exec plugins, where cgroups are writable): made at
    /// the first start, emptied before every start and after every end, removed with it.
    private(set) var cgroup: PluginCgroup?
    /// The cgroup's memory-limit kills when the current run started.
    private var oomKillsAtLaunch: Int64 = 0

    init(spec: PluginSpec, provisionalName: String, engine: EngineParts) {
        self.spec = spec
        self.name = provisionalName
        self.engine = engine
        self.launcher = spec.kind.makeLauncher(engine: engine)
        self.extraGrants = spec.grants
        var overrides: [String: (priority: Int?, timeout: Duration?)] = spec.hookPriorities.mapValues { (priority: Optional($0), timeout: nil) }
        for (event, timeout) in spec.hookTimeouts { overrides[event, default: (nil, nil)].timeout = timeout }
        self.hookOverrides = overrides
        self.pipelineOverrides = spec.pipelinePriorities
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
        return PluginStatus(
            name: name, kind: spec.kindName, state: state, pid: pid, restarts: restarts, description: description, uptime: uptime,
            peer: current?.remote?.peer.description
        )
    }

    func set(_ newState: PluginState, _ detail: String = "") {
        state = newState
        engine.emit(EngineEvent(plugin: name, state: newState, restarts: restarts, detail: detail))
    }

    // MARK: Starting

    /// Starts the plugin and waits for its declaration; does not register it yet.
    func launch() async throws -> PluginDescription {
        let nameIsKnown = spec.name != nil || restarts > 0
        let request = LaunchRequest(
            name: name, nameIsKnown: nameIsKnown, spec: spec, restarts: restarts, extraPrivileges: extraPrivileges,
            cgroup: try await prepareCgroup(nameIsKnown: nameIsKnown)
        )
        let launched = try await launcher.launch(request)
        if !request.nameIsKnown { name = launched.description.name }
        current = launched
        description = launched.description
        if let session = launched.process?.session ?? launched.remote?.session {
            let server = EngineCallServer(
                session: session, caller: name, asked: Set(launched.description.calls), engine: engine,
                isGranted: { [weak self] job in await self?.isGranted(job) == true }
            )
            callServer = Task { await server.serve() }
        }
        return launched.description
    }

    /// The cgroup for the next run of an exec plugin: made if need be, emptied of whatever the
    /// last run left, with the plugin's limits applied.
    private func prepareCgroup(nameIsKnown: Bool) async throws -> PluginCgroup? {
        guard case .exec = spec.kind, let containment = engine.containment else { return nil }
        if cgroup == nil {
            // A plugin that names itself is known only after its HELLO: its cgroup has a name of its own.
            let dirName = nameIsKnown ? name + (spec.instance.map { "." + $0 } ?? "") : "unnamed-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
            do {
                cgroup = try containment.group(for: dirName)
            } catch {
                throw EngineError(.startFailed, "plugin \(name): cannot make its cgroup: \(error)")
            }
        }
        guard var cgroup else { return nil }
        await killRemains(of: cgroup, when: "before its start")
        do {
            try cgroup.apply(spec.limits)
        } catch {
            throw EngineError(.startFailed, "plugin \(name): cannot apply its resource limits: \(error)")
        }
        self.cgroup = cgroup
        oomKillsAtLaunch = cgroup.usage().oomKills
        return cgroup
    }

    /// Applies `limits` to the running plugin's cgroup, if it has one.
    func applyToCgroup(_ limits: ResourceLimits) throws {
        try cgroup?.apply(limits)
    }

    /// Kills what is left in `cgroup` and logs it when something was.
    private func killRemains(of cgroup: PluginCgroup, when: String) async {
        let left = await cgroup.killAll()
        if !left.isEmpty {
            logger.warning("ended processes the plugin left behind", metadata: [
                "plugboard.when": "\(when)", "plugboard.pids": "\(left.map(String.init).joined(separator: ","))", "plugboard.count": "\(left.count)",
            ])
        }
    }

    /// Ends everything the plugin started: its cgroup, or, without cgroups, its process group.
    private func endProcesses() async {
        if let cgroup {
            await killRemains(of: cgroup, when: "after its end")
        } else {
            current?.process?.process.signalGroup(SIGKILL)
        }
    }

    /// Stops the current run's process if it is still there (a start that got as far as a
    /// HELLO but could not be activated), and everything it started.
    func abandonRun() async {
        current?.remote?.session.close(reason: "refused: plugin could not be activated")
        if let run = current?.process, run.process.exitStatus == nil {
            run.session.close(reason: "plugin could not be activated")
            run.process.signal(SIGKILL)
            _ = await run.process.waitForExit()
        }
        await endRun()
    }

    /// Forgets the plugin for good (`plugin rm`, shutdown): whatever is left of its processes
    /// is killed and its cgroup removed. Call after ``stop(grace:)``.
    func release() async {
        guard let cgroup else { return }
        await killRemains(of: cgroup, when: "at its removal")
        await cgroup.remove()
        self.cgroup = nil
    }

    /// Limits and usage for `plugin inspect`.
    var resources: (limits: ResourceLimits, usage: ResourceUsage?, cgroup: String?) {
        (spec.limits, cgroup?.usage(), cgroup?.directories.first)
    }

    /// Registers the plugin's jobs, hooks and pipeline types; it is active from then on.
    func activate() throws {
        guard let description, let participant = current?.participant else { throw EngineError(.startFailed, "plugin \(name) was not started") }
        try engine.hub.register(jobs: description.jobs, for: participant)
        engine.hub.declareTimeouts(description.jobTimeouts, jobs: description.jobs)
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
            var closedHere = false
            for await event in group {
                let isFirst = exitCameFirst == nil
                switch event {
                case .exited(let status):
                    exit = status
                    if isFirst { exitCameFirst = true }
                case .sessionClosed(let error):
                    if error.code == .protocolViolation { violation = error.reason } else { sessionEnd = error.reason }
                    if isFirst { exitCameFirst = false }
                    closedHere = error.code == .peerGone && error.reason.hasPrefix("closed locally")
                case .escalated:
                    continue
                }
                guard isFirst else { continue }
                // Whichever came first, end the other: a plugin whose session ended is stopped.
                session.close(reason: "plugin ended")
                // A session this side closed (stop(grace:) sends GOAWAY so, abandonRun too)
                // is escalated by whoever closed it, after its grace: a SIGTERM here would
                // reach the plugin before the GOAWAY it is owed (issue 19).
                if exit == nil, process.exitStatus == nil, !closedHere {
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

    /// Ends the current run's own tasks (engine calls, output), everything its process
    /// started, and cleans up after it.
    func endRun() async {
        callServer?.cancel()
        callServer = nil
        await endProcesses()
        current?.process?.output.cancel()
        await launcher.cleanUp()
    }

    private func superviseUntilStopped() async {
        var failedStart: PluginEndReason?
        while true {
            var reason: PluginEndReason
            if let failedStart {
                reason = failedStart
            } else if let run = current?.process {
                reason = await Self.waitForEnd(run)
                if let limit = spec.limits.memoryBytes, let cgroup, cgroup.usage().oomKills > oomKillsAtLaunch {
                    reason = .overMemoryLimit(limit, then: run.process.exitStatus)
                }
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
                case .crashLoop, .hopeless: withdraw(reason: "failed (\(why))", expectBack: nil)
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
                // stop() came while it started: the new run must not outlive it.
                if stopping {
                    await abandonRun()
                    return
                }
                try activate()
            } catch {
                logger.warning("restart failed", metadata: ["plugin.error": "\(error)"])
                // Whatever started is stopped: a run that is not registered does not live on.
                await abandonRun()
                // A failed start counts as an end: the history decides again at once.
                if let e = error as? EngineError, e.code == .daemonOutOfResources {
                    failedStart = .daemonOutOfResources(e.reason)
                } else if let e = error as? RoutingError, e.code == .nameConflict {
                    failedStart = .registrationConflict(e.reason)
                } else {
                    failedStart = .startFailed("\(error)")
                }
            }
        }
    }

    /// Marks a plugin disabled without starting it (it was disabled before plugboardd restarted).
    func markDisabled() {
        set(.disabled, "disabled by an operator (before plugboardd restarted)")
    }

    /// Marks a plugin that could not start (at boot, an optional one) failed, with why.
    func markFailed(_ why: String) {
        _ = history.decide(after: .startFailed(why), policy: .never, backoff: spec.backoff, crashLoop: spec.crashLoop, activeSince: nil, now: .now)
        set(.failed, "its start failed: \(why)")
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
        try await launchAndActivate()
    }

    /// Starts and registers it for an operator; on failure nothing of the run is left and
    /// the plugin is `failed` with the reason.
    private func launchAndActivate() async throws {
        // A remote plugin is not started: it is waited for (it connects in).
        if case .remote = spec.kind {
            beginRemote()
            return
        }
        do {
            _ = try await launch()
            try activate()
        } catch {
            await abandonRun()
            set(.failed, "\(error)")
            throw error
        }
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
        try await launchAndActivate()
    }

    func withdraw(reason: String, expectBack: Duration?) {
        engine.publish("registration.withdrawn", [("plugin", .string(name)), ("reason", .string(reason))])
        engine.hub.withdraw(owner: name, reason: reason, expectBackWithin: expectBack)
        engine.hooks.withdraw(owner: name, reason: reason)
        engine.pipeline.withdraw(owner: name, reason: reason)
    }

    // MARK: Stopping

    /// Marks this run as being replaced (`plugin upgrade`): its end, from now on, is not a
    /// crash to withdraw and restart it for — its registrations belong to the new run.
    func beginRetiring() { stopping = true }

    /// Undoes ``beginRetiring()`` when the new version could not take over after all.
    func cancelRetiring() { stopping = false }

    /// Stops taking calls, lets in-flight calls finish within `grace`, asks the plugin to
    /// stop (GOAWAY), then SIGTERM, then SIGKILL.
    ///
    /// `retiring` (a `plugin upgrade`): another run of this plugin holds its registrations
    /// now, so nothing is withdrawn; the wait is for `retiring`'s drain (the calls this run
    /// took before the switch) instead.
    func stop(grace: Duration, retiring drain: (@Sendable () async -> Void)? = nil) async {
        stopping = true
        if drain == nil {
            engine.hub.withdraw(owner: name, reason: "shutting down", expectBackWithin: grace)
            engine.hooks.withdraw(owner: name, reason: "shutting down")
            engine.pipeline.withdraw(owner: name, reason: "shutting down")
        }
        // Wait for the last in-flight call to end (the event itself), but no longer than the grace.
        let calls = engine.hub.inFlight
        let owner = name
        await withTaskGroup(of: Void.self) { group in
            if let drain { group.addTask { await drain() } } else { group.addTask { await calls.waitUntilDrained(owner: owner) } }
            group.addTask { [clock = engine.clock] in try? await clock.sleep(for: grace) }
            await group.next()
            group.cancelAll()
        }
        if drain == nil { engine.hub.withdraw(owner: name, reason: "stopped") }
        current?.remote?.session.close(reason: "plugboardd is stopping plugin \(name)")
        if drain == nil { engine.remoteArrivals.drop(name, reason: "plugin \(name) is stopping") }
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
        // A retired run says nothing: the plugin of this name is active, in its new version.
        if drain == nil { set(.stopped, "shut down") } else { state = .stopped }
    }
}

extension PluginSpec {
    /// "builtin", "exec" or "container".
    var kindName: String {
        switch kind {
        case .builtin: return "builtin"
        case .exec: return "exec"
        case .container: return "container"
        case .remote: return "remote"
        }
    }
}
