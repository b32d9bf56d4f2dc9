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
import NIOConcurrencyHelpers
import Pipeline
import PluginKit
import Routing

/// Something that happened to a plugin.
public struct EngineEvent: Sendable, Hashable {
    /// The plugin's name.
    public var plugin: String
    /// The state it entered.
    public var state: PluginState
    /// How many times it has been restarted.
    public var restarts: Int
    /// What happened, for a person ("disabled by an operator", why it is restarting, …).
    public var detail: String
}

/// A plugin as `plugboard plugin ls` shows it.
public struct PluginStatus: Sendable, Hashable {
    /// Its name.
    public var name: String
    /// builtin, exec or container.
    public var kind: String
    /// Its state now.
    public var state: PluginState
    /// Its process, for exec and container plugins that run.
    public var pid: pid_t?
    /// How many times it has been restarted.
    public var restarts: Int
    /// What it declared; nil until its declaration has arrived.
    public var description: PluginDescription?
    /// Seconds since it became active this time; nil when it is not active. For a remote
    /// plugin: how long it has been connected.
    public var uptime: Double?
    /// A remote plugin's peer while it is connected (address, listener, identity).
    public var peer: String? = nil
}

/// What keeps plugins' durable state (the state service): a plugin's state belongs to that
/// plugin, so `plugin rm` sets it aside and a new plugin of the same name starts empty,
/// unless it is added with `--adopt-state`.
public protocol PluginStateCustody: Sendable {
    /// Sets `plugin`'s state aside; returns how many keys it had.
    func setAside(_ plugin: String) async throws -> Int
    /// Gives `plugin` what a removed plugin `removed` left; throws when there is nothing.
    func adopt(_ removed: String, into plugin: String) async throws -> Int
}

/// What supervisors share with the engine.
struct EngineParts: Sendable {
    let hub: Hub
    let hooks: Hooks
    let pipeline: Pipeline
    let logger: Logger
    let shimPath: String?
    let containers: ContainerRuntime?
    let emit: @Sendable (EngineEvent) -> Void
    /// Publishes on the event bus.
    let publish: @Sendable (String, [(String, Value)]) -> Void
    /// Jobs every plugin may call without a grant (those of `openToAll` plugins).
    let openJobs: NIOLockedValueBox<Set<String>>
    let callerFor: @Sendable (String) -> (any EngineCalls)?
    /// The in-memory session built-ins make byte streams on, once the engine has booted.
    let streams: NIOLockedValueBox<InProcessStreams?>
    /// What supervisors wait on between restarts (the backoff): the continuous clock, or a
    /// test's own.
    let clock: any Clock<Duration>
    /// Cgroups for exec plugins; nil runs them in process groups only.
    let containment: PluginContainment?
    /// Remote plugins' connections, handed from the listeners to their supervisors.
    let remoteArrivals = RemoteArrivals()
}

/// The engine: the hub, the pipeline and the hooks, and the plugins that serve them.
///
/// ``boot(_:)`` starts every plugin, waits for each declaration, orders them by what they
/// require and activates them in that order; ``shutdown(grace:)`` stops them in reverse.
public final class Engine: Sendable {
    /// The jobs and who serves them: job calls are routed through it.
    public let hub: Hub
    /// The ordered message pipeline.
    public let pipeline: Pipeline
    /// The lifecycle hook chains.
    public let hooks: Hooks
    let logger: Logger
    let parts: EngineParts
    private let supervisors = NIOLockedValueBox<[(name: String, supervisor: PluginSupervisor)]>([])
    private let order = NIOLockedValueBox<[String]>([])
    private let subscribers = NIOLockedValueBox<[UUID: AsyncStream<EngineEvent>.Continuation]>([:])
    /// Told of every run-time change once it holds (plugboardd records them).
    let changeRecorder = NIOLockedValueBox<(@Sendable (PluginChange) async -> Void)?>(nil)
    /// Who keeps plugins' durable state (the state service), once plugboardd has said.
    let stateCustody = NIOLockedValueBox<(any PluginStateCustody)?>(nil)
    /// Names being added right now: a second `plugin add` of one of them is refused at once.
    let claimedNames = NIOLockedValueBox<Set<String>>([])
    /// One admin operation per plugin name at a time (add, remove, enable, disable,
    /// restart, set, grant): six concurrent restarts are six restarts in a row, never six
    /// processes.
    let operations = KeyedGate()
    /// The signature policy image pulls are checked against (skopeo's policy.json, from
    /// plugboardd's `--image-policy`); nil accepts any signature or none (digests are
    /// checked all the same). docs/DISTRIBUTION.md.
    public let imagePolicy = NIOLockedValueBox<String?>(nil)
    /// Where skopeo finds images' signatures (a registries.d(5) directory, plugboardd's
    /// `--image-registries-d`); nil: skopeo's default, /etc/containers/registries.d.
    public let imageRegistriesD = NIOLockedValueBox<String?>(nil)
    /// Image installs and upgrades in progress, by their temporary directory.
    let imageWork = NIOLockedValueBox<Set<String>>([])

    /// Where exec plugins' processes are kept (cgroups); nil when they run in process groups only.
    public let containment: PluginContainment?
    /// The container runtime container plugins run on; nil when containers are not available.
    public let containers: ContainerRuntime?
    /// Every engine event (plugin lifecycle, registrations, hook outcomes, notifications
    /// such as the container lifecycle) and what plugins publish; the events service and
    /// `plugboard events` subscribe to it.
    public let bus = EventBus()

    /// - Parameters:
    ///   - shimPath: the `plugboard-exec-shim` that ties exec plugins' lives to this
    ///     process; by default the one next to the running executable, if present.
    ///   - containers: runc and its state, for container plugins; without it they are refused.
    ///   - clock: what restart backoffs wait on; a test injects one that records the delays.
    ///   - containment: a cgroup per exec plugin, so that it ends whole and takes limits;
    ///     without it plugins run in process groups only.
    public init(
        logger: Logger, shimPath: String? = Engine.defaultShimPath(), containers: ContainerRuntime? = nil,
        clock: any Clock<Duration> = ContinuousClock(), containment: PluginContainment? = nil
    ) {
        self.containment = containment
        self.containers = containers
        let hub = Hub(logger: logger)
        let pipeline = Pipeline(logger: logger)
        let hooks = Hooks(logger: logger)
        self.hub = hub
        self.pipeline = pipeline
        self.hooks = hooks
        self.logger = logger
        let subscribers = self.subscribers
        let bus = self.bus
        hooks.setReporter { report in
            if report.result == "notified" {
                var attributes: [(String, Value)] = [("object", .string(report.object))]
                for entry in report.payload.mapValue ?? [] {
                    if let k = entry.key.stringValue, k != "type", k != "seq", k != "time" { attributes.append((k, entry.value)) }
                }
                bus.publish(report.event, attributes)
            } else {
                Counter(label: "plugboard_hook_chains_total", dimensions: [("event", report.event), ("result", report.result.replacingOccurrences(of: " ", with: "_"))]).increment()
                bus.publish("hook.outcome", [
                    ("event", .string(report.event)), ("object", .string(report.object)), ("result", .string(report.result)),
                    ("plugins", .array(report.plugins.map { .string($0) })), ("skipped", .array(report.skipped.map { .string($0) })),
                    ("detail", .string(report.detail)),
                ])
            }
        }
        let streams = NIOLockedValueBox<InProcessStreams?>(nil)
        self.streams = streams
        parts = EngineParts(
            hub: hub, hooks: hooks, pipeline: pipeline, logger: logger, shimPath: shimPath, containers: containers,
            emit: { event in
                for c in subscribers.withLockedValue({ Array($0.values) }) { c.yield(event) }
                bus.publish("plugin.\(event.state.rawValue)", [
                    ("plugin", .string(event.plugin)), ("state", .string(event.state.rawValue)),
                    ("restarts", .int(Int64(event.restarts))), ("detail", .string(event.detail)),
                ])
            },
            publish: { type, attributes in bus.publish(type, attributes) },
            openJobs: NIOLockedValueBox([]),
            callerFor: { name in InProcessEngineCalls(hub: hub, hooks: hooks, pipeline: pipeline, streams: streams, plugin: name) },
            streams: streams,
            clock: clock,
            containment: containment
        )
        guardContainerHooks()
    }

    /// Checks `container.create` hooks' answers against their plugins' hook privileges
    /// (see ``HookPrivilege``): a hook changes only what its plugin was granted.
    private func guardContainerHooks() {
        let supervisors = self.supervisors
        hooks.setChangeGuard("container.create") { plugin, before, after in
            let supervisor = supervisors.withLockedValue { list in list.first { $0.name == plugin }?.supervisor }
            let granted = await supervisor?.hookPrivileges ?? []
            return HookPrivilege.refusals(before: before, after: after, granted: granted)
        }
    }

    /// `plugboard-exec-shim` next to the running executable, if it exists.
    public static func defaultShimPath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var dir = (exe as NSString).deletingLastPathComponent
        if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
        let shim = dir + "/plugboard-exec-shim"
        return access(shim, X_OK) == 0 ? shim : nil
    }

    /// Every plugin event from now on.
    public func events() -> AsyncStream<EngineEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: EngineEvent.self)
        let id = UUID()
        subscribers.withLockedValue { $0[id] = continuation }
        continuation.onTermination = { [subscribers] _ in _ = subscribers.withLockedValue { $0.removeValue(forKey: id) } }
        return stream
    }

    /// Starts `specs`, waits for their declarations, and activates them in boot order.
    ///
    /// A cycle or a missing requirement is an ``EngineError`` naming the plugins; so is a
    /// plugin that does not start. Then everything started is stopped again.
    public func boot(_ specs: [PluginSpec], grace: Duration = .seconds(5)) async throws {
        var started: [(String, PluginSupervisor, PluginDescription)] = []
        for spec in specs {
            if let name = spec.name, let problem = Names.problem(withPluginName: name, allowReserved: spec.openToAll) {
                throw EngineError(.badName, problem)
            }
        }
        try await startStreamSession()
        // Calls plugins make right after their HELLO, to jobs of plugins still starting,
        // wait for the boot instead of failing as unknown.
        let booted = ReadinessSignal()
        hub.holdUnknownJobs(until: booted)
        defer {
            hub.holdUnknownJobs(until: nil)
            booted.fire()
        }
        // Containers an earlier plugboardd left in our runc root (it was killed) go first,
        // and so does whatever its plugins left in our cgroups.
        if let containers {
            await containers.runc.removeAll(logger: logger)
            let bundles = containers.removeLeftoverBundles()
            if bundles > 0 { logger.warning("removed container bundles left by an earlier plugboardd", metadata: ["plugboard.count": "\(bundles)"]) }
        }
        if let containment {
            for (plugin, pids) in await containment.sweepLeftovers() {
                logger.warning("ended processes a previous plugboardd's plugin left behind", metadata: [
                    "plugin.name": "\(plugin)", "plugboard.pids": "\(pids.map(String.init).joined(separator: ","))", "plugboard.count": "\(pids.count)",
                ])
            }
        }
        // Plugins an operator disabled before a restart are listed, not started.
        var failedOptional: [(String, PluginSupervisor)] = []
        // Remote plugins are not started: they are listed away and waited for.
        for spec in specs where spec.isRemote && !spec.startDisabled {
            guard let name = spec.name else { continue }
            let supervisor = PluginSupervisor(spec: spec, provisionalName: name, engine: parts)
            await supervisor.beginRemote()
            failedOptional.append((name, supervisor))
        }
        for spec in specs where spec.startDisabled {
            guard let name = spec.name else { continue }
            let supervisor = PluginSupervisor(spec: spec, provisionalName: name, engine: parts)
            await supervisor.markDisabled()
            failedOptional.append((name, supervisor))
        }
        let specs = specs.filter { !$0.startDisabled && !$0.isRemote }
        do {
            // Start them all concurrently: each waits only for its own HELLO.
            let results = await withTaskGroup(of: (Int, Result<(String, PluginSupervisor, PluginDescription), any Error>).self) { group in
                for (i, spec) in specs.enumerated() {
                    let provisional = spec.name ?? "plugin\(i)"
                    let supervisor = PluginSupervisor(spec: spec, provisionalName: provisional, engine: parts)
                    group.addTask {
                        do {
                            // The name it runs under (NAME= on the command line) wins over the declared one.
                            var description = try await supervisor.launch()
                            description.name = await supervisor.name
                            // Known at once, so that a call it makes right after its HELLO (state.get
                            // to the state service) is checked against its grants, not refused as
                            // coming from nobody.
                            self.appendSupervisor(description.name, supervisor)
                            return (i, .success((description.name, supervisor, description)))
                        } catch {
                            return (i, .failure(error))
                        }
                    }
                }
                var all: [(Int, Result<(String, PluginSupervisor, PluginDescription), any Error>)] = []
                for await r in group { all.append(r) }
                return all.sorted { $0.0 < $1.0 }
            }
            var firstRequiredFailure: (any Error)?
            for (i, result) in results {
                switch result {
                case .success(let s): started.append(s)
                case .failure(let error):
                    if specs[i].required {
                        if firstRequiredFailure == nil { firstRequiredFailure = error }
                    } else if let name = specs[i].name {
                        // An optional plugin that cannot start is listed failed; the daemon runs on.
                        logger.error("optional plugin failed to start; plugboardd runs without it", metadata: ["plugin.name": "\(name)", "plugin.error": "\(error)"])
                        let supervisor = PluginSupervisor(spec: specs[i], provisionalName: name, engine: parts)
                        await supervisor.markFailed("\(error)")
                        failedOptional.append((name, supervisor))
                    }
                }
            }
            if let firstRequiredFailure { throw firstRequiredFailure }
            // An optional plugin whose requirements went with a failed one fails too.
            while true {
                let provided = Set(started.flatMap(\.2.jobs))
                var dropped = false
                for (index, (name, supervisor, description)) in started.enumerated() where !(await supervisor.spec.required) {
                    if let missing = description.requires.first(where: { !provided.contains($0) }) {
                        await supervisor.stop(grace: .milliseconds(500))
                        await supervisor.markFailed("it requires job \(missing), which no plugin provides")
                        logger.error("optional plugin not started: a job it requires is missing", metadata: ["plugin.name": "\(name)", "plugin.requires": "\(missing)"])
                        failedOptional.append((name, supervisor))
                        started.remove(at: index)
                        dropped = true
                        break
                    }
                }
                if !dropped { break }
            }
            let names = started.map(\.0)
            if let duplicate = Dictionary(grouping: names, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
                throw EngineError(.duplicateName, "two plugins are named \(duplicate)")
            }
            // The services (events, state, metrics) first, so that no plugin's first call to
            // them finds them missing, and last at shutdown.
            var services: Set<String> = []
            for (name, supervisor, _) in started where await supervisor.spec.openToAll { services.insert(name) }
            let bootOrder = try BootOrder.sort(started.map(\.2), first: services)
            // Until each is active, calls to its jobs wait for it instead of failing.
            for (name, supervisor, description) in started {
                let spec = await supervisor.spec
                try hub.reserve(jobs: description.jobs, for: name, within: spec.startTimeout + grace, remote: spec.kindName != "builtin")
            }
            supervisors.withLockedValue { $0 = bootOrder.compactMap { n in started.first { $0.0 == n }.map { ($0.0, $0.1) } } + failedOptional.map { ($0.0, $0.1) } }
            order.withLockedValue { $0 = bootOrder }
            for name in bootOrder {
                guard let supervisor = started.first(where: { $0.0 == name })?.1 else {
                    throw EngineError(.startFailed, "plugin \(name) is in the boot order but was not started")
                }
                try await supervisor.activate()
                logger.info("plugin active", metadata: ["plugin.name": "\(name)"])
            }
        } catch {
            for (_, supervisor, _) in started.reversed() { await supervisor.stop(grace: .milliseconds(500)) }
            // Remote plugins wait for their connections: that ends too.
            for (_, supervisor) in failedOptional {
                if await supervisor.spec.isRemote { await supervisor.stop(grace: .zero) }
            }
            throw error
        }
    }

    /// Where built-ins make byte streams, once the engine has booted.
    private let streams: NIOLockedValueBox<InProcessStreams?>

    private func startStreamSession() async throws {
        guard streams.withLockedValue({ $0 }) == nil else { return }
        let made = try await InProcessStreams.make(logger: logger)
        streams.withLockedValue { $0 = made }
    }

    /// Stops every plugin, in reverse boot order.
    public func shutdown(grace: Duration = .seconds(5)) async {
        let all = supervisors.withLockedValue { $0 }
        for (name, supervisor) in all.reversed() {
            logger.info("stopping plugin", metadata: ["plugin.name": "\(name)"])
            await supervisor.stop(grace: grace)
            await supervisor.release()
        }
        for c in subscribers.withLockedValue({ Array($0.values) }) { c.finish() }
        bus.closeAll()
        containment?.removeInstance()
    }

    /// The plugins, in boot order.
    public func status() async -> [PluginStatus] {
        var result: [PluginStatus] = []
        for (_, s) in supervisors.withLockedValue({ $0 }) { result.append(await s.status) }
        return result
    }

    var supervisorList: [(name: String, supervisor: PluginSupervisor)] { supervisors.withLockedValue { $0 } }

    func appendSupervisor(_ name: String, _ supervisor: PluginSupervisor) {
        supervisors.withLockedValue { $0.append((name, supervisor)) }
    }

    func removeSupervisor(_ name: String) {
        supervisors.withLockedValue { $0.removeAll { $0.name == name } }
    }

    /// Puts `supervisor` in the place of `name`'s (a `plugin upgrade`), keeping the boot order.
    func replaceSupervisor(_ name: String, with supervisor: PluginSupervisor) {
        supervisors.withLockedValue { list in
            if let i = list.firstIndex(where: { $0.name == name }) { list[i].supervisor = supervisor }
        }
    }

    /// Sets who is told of each operator change once it holds (`plugin add`, `rm`, `enable`,
    /// `disable`, `set`, `grant`): plugboardd records them in its state directory.
    public func setChangeRecorder(_ record: @escaping @Sendable (PluginChange) async -> Void) {
        changeRecorder.withLockedValue { $0 = record }
    }

    func recordChange(_ change: PluginChange) async {
        await changeRecorder.withLockedValue({ $0 })?(change)
    }

    /// Tells the engine who keeps plugins' state (plugboardd passes the state service's store).
    public func setStateCustody(_ custody: any PluginStateCustody) {
        stateCustody.withLockedValue { $0 = custody }
    }

    /// The boot order of the last ``boot(_:)``.
    public var bootOrder: [String] { order.withLockedValue { $0 } }
}

/// A built-in plugin's requests to the engine: straight into the hub and the hooks. A
/// built-in is linked into the daemon and trusted with every job and hook chain.
struct InProcessEngineCalls: EngineCalls {
    let hub: Hub
    let hooks: Hooks
    let pipeline: Pipeline
    let streams: NIOLockedValueBox<InProcessStreams?>
    let plugin: String

    func send(_ type: String, _ body: Value) async throws -> PipelineResult {
        try await pipeline.route(PipelineMessage(type: type, body: body))
    }

    func callBest(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value {
        try await hub.callBest(point, argument, timeout: timeout, caller: plugin)
    }

    func makeByteStream() async throws -> (ByteStreamWriter, ByteStreamReader) {
        guard let streams = streams.withLockedValue({ $0 }) else {
            throw RoutingError(.rejected, "plugin \(plugin) asked for a byte stream before the engine booted")
        }
        return try await streams.makeByteStream()
    }

    func callProvider(_ point: String, provider: String, _ argument: Value, timeout: Duration) async throws -> Value {
        try await hub.callProvider(point, owner: provider, argument, timeout: timeout, caller: plugin)
    }

    func callAll(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value {
        .array(try await hub.callAll(point, argument, timeout: timeout, caller: plugin).map(\.value))
    }

    func call(_ job: String, _ argument: Value, timeout: Duration) async throws -> Value {
        try await hub.call(job, argument, timeout: timeout, caller: plugin)
    }

    func runHooks(_ event: String, payload: Value, object: String) async throws -> HookOutcome {
        try await hooks.run(event, payload: payload, object: object)
    }

    func notify(_ event: String, payload: Value, object: String) async throws {
        hooks.notify(event, payload: payload, object: object)
    }
}

/// Byte streams for built-ins, which have no session of their own. A stream's ends must be
/// on two sessions before bytes flow (a pipe whose ends are both here is not connected), so
/// the engine keeps an in-memory session pair: the writer is made on one, its reader is
/// handed over a channel to the other, and that reader — like any plugin's — is bridged to
/// whoever the built-in answers.
struct InProcessStreams: Sendable {
    let near: Session
    let far: Session
    let handover: Sender
    let arrivals: Receiver
    /// One handover at a time, so that each maker gets its own reader back.
    let gate = Limiter(limit: 1)

    static func make(logger: Logger) async throws -> InProcessStreams {
        let (near, far) = Session.inMemoryPair(.init(name: "plugboardd-streams"), .init(name: "plugboardd-streams-far"), logger: logger)
        async let farStarted: Hello = far.start()
        try await near.start()
        _ = try await farStarted
        let handover = try near.open(label: "streams")
        guard let arrivals = try await far.accept() else {
            throw RoutingError(.rejected, "the in-process stream session closed at once")
        }
        return InProcessStreams(near: near, far: far, handover: handover, arrivals: arrivals)
    }

    func makeByteStream() async throws -> (ByteStreamWriter, ByteStreamReader) {
        try await gate.run {
            let (writer, reader) = try near.makeByteStream()
            try await handover.send(.channel(.byteStreamReader(reader)))
            guard case .channel(.byteStreamReader(let arrived))? = try await arrivals.receive() else {
                throw RoutingError(.rejected, "a byte stream for a built-in did not arrive")
            }
            return (writer, arrived)
        }
    }
}
