#if canImport(Glibc)
import Glibc
#endif
import Chan
import Containers
import CoreMetrics
import Foundation
import Hooks
import Hub
import Logging
import PluginProcess
import NIOConcurrencyHelpers
import Pipeline
import PluginKit
import Routing
import Spawn

/// Keeps one plugin alive: starts it, registers what it declared, watches it, and on a
/// crash withdraws it, waits (exponential backoff with jitter) and starts it again — until
/// the crash-loop limit marks it `failed`.
actor PluginSupervisor {
    /// The largest frame a plugin may send plugboardd (its HELLO says so): big data goes as
    /// byte streams in 64 KiB chunks, and this bounds what one frame can cost.
    static let maxFrameFromPlugin = 1 << 20
    /// Engine calls one plugin may have in flight; more wait in its channels (credit).
    static let maxEngineCallsInFlight = 32

    private(set) var spec: PluginSpec
    private(set) var name: String
    private(set) var state: PluginState = .starting
    private(set) var restarts = 0
    private(set) var history: [(at: ContinuousClock.Instant, reason: String)] = []
    private(set) var description: PluginDescription?
    private(set) var pid: pid_t?
    private var session: Session?
    private var process: SpawnedProcess?
    private var participant: Participant?
    private var stopping = false
    private var monitor: Task<Void, Never>?
    private var activeSince: ContinuousClock.Instant?
    /// A built-in's `onStop`.
    private var builtinStop: (@Sendable () async -> Void)?
    /// A container plugin's runc id, while it may exist.
    private(set) var containerID: String?
    /// Container privileges granted after launch (`plugboard plugin grant NAME network=host`).
    private(set) var extraPrivileges: Set<Privilege> = []
    private let engine: EngineParts
    private let logger: Logger

    init(spec: PluginSpec, provisionalName: String, engine: EngineParts) {
        self.spec = spec
        self.name = provisionalName
        self.engine = engine
        var logger = engine.logger
        logger[metadataKey: "plugin.name"] = "\(provisionalName)"
        self.logger = logger
    }

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
        switch spec.kind {
        case .builtin(let plugin):
            let context = PluginContext(name: name, options: spec.options, restarts: restarts, engine: engine.callerFor(self.name))
            let declaration = plugin.declare(context)
            let description = PluginDescription(declaration)
            participant = .inProcess(name) { try await declaration.answer($0) }
            builtinStop = declaration.onStop
            self.description = description
            return description
        case .exec(let command, let arguments):
            var environment = ProcessInfo.processInfo.environment
            environment.merge(pluginEnvironment) { _, ours in ours }
            let (executable, argv): (String, [String]) = engine.shimPath.map { ($0, [String(getpid()), command] + arguments) } ?? (command, arguments)
            return try await launchProcess(executable: executable, arguments: argv, environment: environment, what: command)
        case .container(let bundle):
            return try await launchContainer(bundle: bundle)
        }
    }

    /// The PLUGBOARD_* variables every subprocess and container plugin gets.
    private var pluginEnvironment: [String: String] {
        var environment: [String: String] = [:]
        // Without NAME= the plugin names itself (its declared name); after that it is known.
        if spec.name != nil || restarts > 0 { environment["PLUGBOARD_PLUGIN_NAME"] = name }
        environment["PLUGBOARD_PROTOCOL"] = PluginKit.protocolName
        environment["PLUGBOARD_RESTARTS"] = String(restarts)
        environment["PLUGBOARD_OPTIONS"] = spec.options
        return environment
    }

    /// Checks the manifest's privileges against the grants, writes the OCI spec and starts
    /// `runc run --preserve-fds 2`, which hands fds 3 and 4 to the plugin in the container.
    private func launchContainer(bundle: String) async throws -> PluginDescription {
        guard let runtime = engine.containers else {
            throw EngineError(.startFailed, "plugin \(name): container plugins need runc, and this plugboardd has none (install Debian's runc package)")
        }
        let manifest: PluginManifest
        do {
            manifest = try PluginManifest.load(bundle: bundle)
        } catch {
            throw EngineError(.startFailed, "plugin \(name): \(error)")
        }
        let requested = manifest.requestedPrivileges
        let missing = Privilege.missing(requested, granted: spec.privileges.union(extraPrivileges), all: spec.grantAllPrivileges)
        guard missing.isEmpty else { throw EngineError(.permissionDenied, Privilege.refusal(plugin: name, missing: missing)) }
        let id = ContainerRuntime.pluginContainerID(name)
        let directory = runtime.bundles + "/plugins/" + name
        do {
            try OCISpec.forPlugin(name: name, bundle: bundle, manifest: manifest, granted: requested, environment: pluginEnvironment)
                .write(toBundle: directory)
        } catch {
            throw EngineError(.startFailed, "plugin \(name): cannot write its OCI spec: \(error)")
        }
        // A container of this name exists only if removing the last one failed: boot clears
        // what a killed daemon left, and every end is followed by a delete.
        if containerID != nil { await runtime.runc.delete(id) }
        containerID = id
        let (executable, arguments) = runtime.runc.runCommand(id: id, bundle: directory, preserveFDs: 2)
        do {
            return try await launchProcess(executable: executable, arguments: arguments, environment: ProcessInfo.processInfo.environment, what: "runc for \(bundle)")
        } catch {
            await removeContainer()
            throw error
        }
    }

    /// Removes the plugin's container from runc's state, if it is a container plugin.
    private func removeContainer() async {
        guard let id = containerID, let runtime = engine.containers else { return }
        if await runtime.runc.delete(id) { containerID = nil }
    }

    private func launchProcess(executable: String, arguments argv: [String], environment: [String: String], what command: String) async throws -> PluginDescription {
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        let launched: PluginProcess
        do {
            launched = try await PluginProcess.launch(
                executable: executable, arguments: argv, environment: environment,
                extraDescriptors: [1: out.writeEnd, 2: err.writeEnd],
                configuration: .init(name: "plugboardd", maxFrameSize: Self.maxFrameFromPlugin, handshakeTimeout: spec.startTimeout), logger: logger
            )
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] { close(fd) }
            throw EngineError(.startFailed, "plugin \(name): cannot start \(command): \(error)")
        }
        close(out.writeEnd)
        close(err.writeEnd)
        let logger = self.logger
        let pluginName = name
        let lastErrors = NIOLockedValueBox<[String]>([])
        Task { try? await OutputLines.follow(fd: out.readEnd, plugin: pluginName, stream: "stdout", logger: logger) }
        let errors = Task { try? await OutputLines.follow(fd: err.readEnd, plugin: pluginName, stream: "stderr", logger: logger, recent: lastErrors) }
        process = launched.process
        pid = launched.process.pid
        session = launched.session
        do {
            let hello = try await launched.session.start()
            let description = try PluginDescription(wire: hello.meta, fallbackName: name)
            if spec.name == nil && restarts == 0 { name = description.name }
            let calls = try launched.session.open(label: "calls")
            let process = launched.process
            participant = .remote(name, calls: calls) {
                await process.waitForExit(timeout: .seconds(2)).map { "\($0)" }
            }
            serveEngineCalls(on: launched.session, description: description, caller: name)
            self.description = description
            return description
        } catch {
            launched.session.close(reason: "start failed")
            launched.process.signal(SIGKILL)
            let status = await launched.process.waitForExit()
            // What it said on stderr as it died (runc's reason, a missing library) is the
            // useful part: wait, briefly, for the pipe to drain.
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await errors.value }
                group.addTask { try? await Task.sleep(for: .seconds(1)) }
                await group.next()
                group.cancelAll()
            }
            let said = lastErrors.withLockedValue { $0 }
            throw EngineError(.startFailed, "plugin \(name) \(status) before it was ready: \(error)" + (said.isEmpty ? "" : "; its last words on stderr: \(said.joined(separator: " | "))"))
        }
    }

    /// Registers the plugin's jobs, hooks and pipeline types; it is active from then on.
    func activate() throws {
        guard let description, let participant else { throw EngineError(.startFailed, "plugin \(name) was not started") }
        try engine.hub.register(jobs: description.jobs, for: participant)
        if spec.openToAll { engine.openJobs.withLockedValue { $0.formUnion(description.jobs) } }
        registerHooksAndPipeline()
        engine.publish("registration.added", [
            ("plugin", .string(name)), ("jobs", .array(description.jobs.map { .string($0) })),
            ("hooks", .array(description.hooks.map { .string("\($0.event) (\($0.phase.rawValue))") })),
            ("pipeline", .array(description.messageTypes.map { .string($0.type) })),
        ])
        activeSince = .now
        set(.active, "registered \(description.jobs.count) jobs, \(description.hooks.count) hooks, \(description.messageTypes.count) pipeline types")
        if process != nil, monitor == nil {
            monitor = Task { await self.superviseUntilStopped() }
        }
    }

    /// Registers the declared hooks and pipeline types, with the operator's overrides.
    private func registerHooksAndPipeline() {
        guard let description, let participant else { return }
        for hook in description.hooks {
            let o = hookOverrides[hook.event]
            engine.hooks.register(
                hook.event, phase: hook.phase, priority: o?.priority ?? hook.priority, timeout: o?.timeout ?? hook.timeout,
                policy: hook.policy, overrides: hook.overrides, by: participant
            )
        }
        for m in description.messageTypes {
            engine.pipeline.register(type: m.type, priority: pipelineOverrides[m.type] ?? m.priority, timeout: m.timeout, by: participant)
        }
    }

    // MARK: Supervision

    private func waitForEnd() async -> String {
        guard let process, let session else { return "not running" }
        let closed = await withTaskGroup(of: String?.self) { group -> String in
            group.addTask { "\(await process.waitForExit())" }
            group.addTask {
                let reason = await session.waitUntilClosed()
                return reason.code == .protocolViolation ? "broke the protocol (\(reason.reason))" : nil
            }
            var why: String?
            var brokeProtocol: String?
            for await r in group {
                if let r, r.hasPrefix("broke the protocol") { brokeProtocol = r }
                if let r, why == nil {
                    why = r
                    // Whichever came first, end the other: a plugin that broke the protocol is stopped.
                    session.close(reason: "plugin ended")
                    if process.exitStatus == nil {
                        process.signal(SIGTERM)
                        Task {
                            if await process.waitForExit(timeout: .seconds(2)) == nil { process.signal(SIGKILL) }
                        }
                    }
                }
            }
            // A plugin cut off for breaking the protocol may exit 0 before that is reported
            // here: the violation is the reason whatever order the two arrived in, so that
            // it is restarted, not taken for a clean exit.
            return brokeProtocol ?? why ?? "\(process.exitStatus.map { "\($0)" } ?? "ended")"
        }
        if let status = process.exitStatus, !closed.contains("exited"), !closed.contains("killed") {
            return "\(closed); then \(status)"
        }
        return closed
    }

    private func superviseUntilStopped() async {
        while true {
            let reason = await waitForEnd()
            if stopping { return }
            await removeContainer()
            let exitedCleanly = process?.exitStatus == .exited(0) && !reason.contains("protocol")
            let restart: Bool
            switch spec.restartPolicy {
            case .always: restart = true
            case .onFailure: restart = !exitedCleanly
            case .never: restart = false
            }
            history.append((.now, reason))
            if reason.contains("protocol") { Counter(label: "plugboard_frame_errors_total", dimensions: [("plugin", name)]).increment() }
            logger.warning("plugin ended", metadata: ["plugin.reason": "\(reason)", "plugin.restart": "\(restart)"])
            guard restart else {
                withdraw(reason: "ended (\(reason)) and its restart policy is \(spec.restartPolicy.rawValue)", expectBack: nil)
                set(exitedCleanly ? .stopped : .failed, reason)
                return
            }
            let window = ContinuousClock.now - spec.crashLoop.window
            let recent = history.filter { $0.at > window }.count
            if recent > spec.crashLoop.restarts {
                let why = "crash loop: \(recent) ends in \(spec.crashLoop.window); last: \(reason)"
                withdraw(reason: "failed (\(why))", expectBack: nil)
                set(.failed, why)
                return
            }
            if let since = activeSince, ContinuousClock.now - since >= spec.backoff.resetAfter { consecutiveFailures = 0 }
            consecutiveFailures += 1
            let delay = spec.backoff.jittered(spec.backoff.delay(attempt: consecutiveFailures))
            withdraw(reason: reason, expectBack: delay + spec.startTimeout)
            set(.restarting, "\(reason); restarting in \(delay)")
            try? await Task.sleep(for: delay)
            if stopping { return }
            restarts += 1
            Counter(label: "plugboard_plugin_restarts_total", dimensions: [("plugin", name)]).increment()
            do {
                _ = try await launch()
                try activate()
            } catch {
                logger.warning("restart failed", metadata: ["plugin.error": "\(error)"])
                // A failed start counts as an end; the loop decides again.
                if process == nil || session == nil { set(.failed, "\(error)"); return }
            }
        }
    }

    private var consecutiveFailures = 0
    /// Operator overrides of hook priorities and timeouts, by event (`plugboard plugin set`).
    private(set) var hookOverrides: [String: (priority: Int?, timeout: Duration?)] = [:]
    /// Operator overrides of pipeline priorities, by message type.
    private(set) var pipelineOverrides: [String: Int] = [:]

    /// Jobs granted beyond the launch-time grant (`plugboard plugin grant`).
    private(set) var extraGrants: Set<String> = []

    /// Changes how the plugin is supervised from now on (`plugboard plugin set`).
    func apply(_ settings: [String: String]) throws {
        var next = spec
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) {
            switch key {
            case "restart-policy":
                guard let policy = RestartPolicy(rawValue: value) else {
                    throw EngineError(.badSetting, "restart-policy is always, on-failure or never, not \(value)")
                }
                next.restartPolicy = policy
            case "backoff-initial": next.backoff.initial = try Self.duration(key, value)
            case "backoff-max": next.backoff.maximum = try Self.duration(key, value)
            case "backoff-reset": next.backoff.resetAfter = try Self.duration(key, value)
            case "start-timeout": next.startTimeout = try Self.duration(key, value)
            case "crash-loop-restarts":
                guard let n = Int(value), n >= 0 else { throw EngineError(.badSetting, "crash-loop-restarts is a count, not \(value)") }
                next.crashLoop.restarts = n
            case "crash-loop-window": next.crashLoop.window = try Self.duration(key, value)
            case _ where key.hasPrefix("priority:"):
                guard let n = Int(value) else { throw EngineError(.badSetting, "\(key) is a whole number, not \(value)") }
                let event = String(key.dropFirst("priority:".count))
                try requireHook(event, key)
                hookOverrides[event, default: (nil, nil)].priority = n
            case _ where key.hasPrefix("timeout:"):
                let event = String(key.dropFirst("timeout:".count))
                try requireHook(event, key)
                hookOverrides[event, default: (nil, nil)].timeout = try Self.duration(key, value)
            case _ where key.hasPrefix("pipeline-priority:"):
                guard let n = Int(value) else { throw EngineError(.badSetting, "\(key) is a whole number, not \(value)") }
                let type = String(key.dropFirst("pipeline-priority:".count))
                guard description?.messageTypes.contains(where: { $0.type == type }) == true else {
                    throw EngineError(.badSetting, "plugin \(name) handles no pipeline type \(type)")
                }
                pipelineOverrides[type] = n
            default:
                throw EngineError(.badSetting, "\(key) cannot be set at run time; settable: restart-policy, backoff-initial, backoff-max, backoff-reset, start-timeout, crash-loop-restarts, crash-loop-window, priority:EVENT, timeout:EVENT, pipeline-priority:TYPE")
            }
        }
        spec = next
        // A running plugin's hooks and pipeline types take the new priorities at once.
        if state == .active { registerHooksAndPipeline() }
    }

    private func requireHook(_ event: String, _ key: String) throws {
        guard description?.hooks.contains(where: { $0.event == event }) == true else {
            throw EngineError(.badSetting, "plugin \(name) has no hook for \(event) (\(key))")
        }
    }

    /// "250ms", "2s", "1m", at most ``Duration/longestAccepted`` (one day).
    static func duration(_ key: String, _ text: String) throws -> Duration {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000)]
        let longest = Duration.longestAccepted.saturatingMilliseconds
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let n = Int64(text.dropLast(suffix.count)), n >= 0 else { continue }
            guard n <= longest / scale else {
                throw EngineError(.badSetting, "\(key) is at most one day (86400s), not \(text)")
            }
            return .milliseconds(n * scale)
        }
        throw EngineError(.badSetting, "\(key) is a duration like 250ms, 2s or 1m, not \(text)")
    }

    func grant(_ jobs: [String], privileges: [Privilege] = []) {
        extraGrants.formUnion(jobs)
        extraPrivileges.formUnion(privileges)
    }

    func isGranted(_ job: String) -> Bool {
        (spec.grantAll && (description?.calls.contains(job) ?? false)) || extraGrants.contains(job)
    }

    /// Starts the plugin again now, whatever its state; clears a crash loop (`plugboard plugin restart`).
    func restartNow(grace: Duration) async throws {
        if state == .active || state == .starting || state == .restarting {
            await stop(grace: grace)
        }
        monitor?.cancel()
        monitor = nil
        stopping = false
        history = []
        consecutiveFailures = 0
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
        history = []
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
            group.addTask { try? await Task.sleep(for: grace) }
            await group.next()
            group.cancelAll()
        }
        engine.hub.withdraw(owner: name, reason: "stopped")
        session?.close(reason: "plugboardd is shutting down")
        if let process {
            if await process.waitForExit(timeout: grace) == nil {
                process.signal(SIGTERM)
                if await process.waitForExit(timeout: grace) == nil {
                    process.signal(SIGKILL)
                    _ = await process.waitForExit()
                }
            }
        }
        await removeContainer()
        if let builtinStop { await builtinStop() }
        // The monitor sees `stopping` and returns; wait for it, so that whatever comes next
        // (a restart, an enable) cannot be mistaken by it for a crash.
        if let monitor {
            monitor.cancel()
            await monitor.value
            self.monitor = nil
        }
        set(.stopped, "shut down")
    }

    // MARK: Calls from the plugin

    /// Serves the plugin's "engine" channel: job calls it makes, checked against its grants.
    private nonisolated func serveEngineCalls(on session: Session, description: PluginDescription, caller: String) {
        let engine = self.engine
        let asked = Set(description.calls)
        Task { [weak self] in
            // One budget for all its engine channels: past it the daemon stops reading, the
            // channels' windows fill, and the plugin's sends wait (credit), so a flooding
            // plugin holds at most this many calls' worth of the daemon's memory.
            let slots = Limiter(limit: Self.maxEngineCallsInFlight)
            while let channel = try? await session.accept() {
                guard channel.label == "engine" else { channel.close(); continue }
                Task {
                    while let request = try? await channel.nextRequest() {
                        guard (try? await slots.acquire()) != nil else { return }
                        Task {
                            defer { slots.release() }
                            guard let job = request.body["job"]?.stringValue else {
                                try? await request.fail(code: "bad.request", message: "an engine call is {\"job\": NAME, \"argument\": VALUE}")
                                return
                            }
                            var allowed = engine.openJobs.withLockedValue { $0.contains(job) }
                            if !allowed { allowed = await self?.isGranted(job) == true }
                            guard allowed else {
                                let why = asked.contains(job) ? "it asked for it but was not granted it" : "it did not ask for it in its declaration (\"calls\")"
                                try? await request.fail(code: "permission.denied", message: "plugin \(caller) may not call job \(job): \(why)")
                                return
                            }
                            do {
                                let result = try await engine.hub.call(job, request.body["argument"] ?? .nil, caller: caller)
                                try? await request.respond(result)
                            } catch let error as RoutingError {
                                try? await request.fail(code: "routing.\(error.code)", message: error.reason)
                            } catch {
                                try? await request.fail(code: "engine.error", message: "\(error)")
                            }
                        }
                    }
                }
            }
        }
    }
}

extension PluginSpec {
    var kindName: String {
        switch kind {
        case .builtin: return "builtin"
        case .exec: return "exec"
        case .container: return "container"
        }
    }
}
