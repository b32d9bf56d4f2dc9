import Chan
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Routing

/// The channel hub: named endpoints (jobs) with one owner each, and ranked extension
/// points with several providers.
///
/// Calls are routed to in-process and remote participants alike; every call has a
/// deadline; an owner's departure fails its in-flight calls at once. The hub holds no
/// lock while a handler runs.
public final class Hub: Sendable {
    /// A job endpoint as the admin CLI lists it.
    public struct Endpoint: Sendable, Hashable, PrioritizedRegistration {
        /// The job's name.
        public var name: String
        /// The plugin that owns the job.
        public var owner: String
        /// Always 0: a job has a single owner, so there is nothing to rank.
        public var priority: Int { 0 }
        /// True while its owner restarts: calls wait for it (bounded).
        public var restarting: Bool
        /// True when the owner is a plugin reached over a session rather than in-process.
        public var remote: Bool
    }

    /// One provider of an extension point.
    public struct Provider: Sendable, PrioritizedRegistration {
        /// The extension point provided.
        public var extensionPoint: String
        /// The plugin that provides it.
        public var owner: String
        /// Higher ranks first (``Hub/callBest(_:_:timeout:)`` calls the top one); ties go by plugin name.
        public var priority: Int
        /// Where the provider's handler is reached.
        public var participant: Participant
    }

    private enum Slot {
        case active(Participant)
        /// The owner is restarting; calls wait until `deadline`.
        case restarting(owner: String, deadline: NIODeadline, wasRemote: Bool)

        var owner: String {
            switch self {
            case .active(let p): return p.name
            case .restarting(let owner, _, _): return owner
            }
        }
    }

    private struct State: Sendable {
        var slots: [String: Slot] = [:]
        var providers: [String: [Provider]] = [:]
        /// Calls waiting for a restarting owner, by owner.
        var waiting: [String: WaitingLine<Void>] = [:]
        /// Ids for waiting calls, so a cancelled one can take itself out.
        var waiterIDs = WaitingLine<Void>()
        /// Jobs whose owner left for good (failed, stopped, removed), with why: a call
        /// to one is told that, not just "no job named".
        var departed: [String: (owner: String, reason: String)] = [:]
        /// Deadlines jobs declared for calls that set none.
        var declaredTimeouts: [String: Duration] = [:]
        /// Set while the engine boots: unknown jobs wait for it instead of failing.
        var bootGate: ReadinessSignal?
    }

    private let state = NIOLockedValueBox(State())
    /// In-flight calls, by owner.
    public let inFlight = InFlightCalls()
    /// Calls, errors, timeouts and latency per job and plugin.
    public let metrics = CallMetrics()
    private let logger: Logger

    /// The default deadline of a call.
    public static let defaultTimeout: Duration = .seconds(10)

    /// Makes an empty hub that logs job registrations and departures to `logger`.
    public init(logger: Logger) {
        self.logger = logger
    }

    // MARK: Endpoints

    /// Registers `jobs` for `participant`, all or none. A name owned by another plugin is a
    /// ``RoutingError/Code/nameConflict`` naming that owner; the same owner registering
    /// again (after a restart) replaces its registration and releases waiting calls.
    public func register(jobs: [String], for participant: Participant) throws {
        let released: [CheckedContinuation<Void, any Error>] = try state.withLockedValue { s in
            for job in jobs {
                if let slot = s.slots[job], slot.owner != participant.name {
                    throw RoutingError(
                        .nameConflict,
                        "job \(job) is already registered by plugin \(slot.owner); \(participant.name) cannot register it too",
                        plugin: slot.owner
                    )
                }
            }
            for job in jobs {
                s.slots[job] = .active(participant)
                s.departed[job] = nil
            }
            // The owner is back: every slot still marked restarting for it is gone for good.
            for (name, slot) in s.slots {
                if case .restarting(let owner, _, _) = slot, owner == participant.name { s.slots[name] = nil }
            }
            return s.waiting[participant.name]?.removeAll() ?? []
        }
        logger.debug("jobs registered", metadata: ["plugin.name": "\(participant.name)", "hub.jobs": "\(jobs)"])
        for waiter in released { waiter.resume() }
    }

    /// Adds `participant` as a provider of `extensionPoint`.
    public func provide(_ extensionPoint: String, priority: Int, by participant: Participant) {
        state.withLockedValue { s in
            s.providers[extensionPoint, default: []].removeAll { $0.owner == participant.name }
            s.providers[extensionPoint, default: []].append(
                Provider(extensionPoint: extensionPoint, owner: participant.name, priority: priority, participant: participant)
            )
        }
    }

    /// Providers of `extensionPoint`, best first (higher priority, then plugin name).
    public func providers(of extensionPoint: String) -> [Provider] {
        state.withLockedValue { $0.providers[extensionPoint] ?? [] }.inPriorityOrder()
    }

    /// The best provider of `extensionPoint`, or nil.
    public func bestProvider(of extensionPoint: String) -> Provider? {
        providers(of: extensionPoint).first
    }

    /// Calls the best provider of `extensionPoint` with the deadline `timeout`. When that
    /// provider goes away during the call, the next best is tried: the call fails over in
    /// rank order, and fails only when no provider is left.
    public func callBest(_ extensionPoint: String, _ argument: Value, timeout: Duration = Hub.defaultTimeout, caller: String? = nil) async throws -> Value {
        var tried: Set<String> = []
        while let provider = providers(of: extensionPoint).first(where: { !tried.contains($0.owner) }) {
            tried.insert(provider.owner)
            do {
                return try await provider.participant.invoke(
                    Invocation(kind: .job, name: extensionPoint, payload: argument, extra: caller.map { .fields(("caller", .string($0))) } ?? .nil),
                    timeout: timeout, tracking: inFlight
                )
            } catch let error as RoutingError where error.code == .ownerGone {
                logger.info("provider gone, failing over", metadata: ["hub.point": "\(extensionPoint)", "plugin.name": "\(provider.owner)"])
                continue
            }
        }
        throw RoutingError(.noProvider, tried.isEmpty ? "nobody provides \(extensionPoint)" : "every provider of \(extensionPoint) went away (\(tried.sorted().joined(separator: ", ")))")
    }

    /// Calls the provider `owner` of `extensionPoint` (a caller that names its driver).
    /// Throws ``RoutingError/Code/noProvider`` naming the providers there are when `owner`
    /// is not one of them.
    public func callProvider(_ extensionPoint: String, owner: String, _ argument: Value, timeout: Duration = Hub.defaultTimeout, caller: String? = nil) async throws -> Value {
        let all = providers(of: extensionPoint)
        guard let provider = all.first(where: { $0.owner == owner }) else {
            let there = all.map(\.owner)
            throw RoutingError(.noProvider, "plugin \(owner) does not provide \(extensionPoint)" + (there.isEmpty ? "; nobody does" : "; its providers are \(there.joined(separator: ", "))"))
        }
        return try await provider.participant.invoke(
            Invocation(kind: .job, name: extensionPoint, payload: argument, extra: caller.map { .fields(("caller", .string($0))) } ?? .nil),
            timeout: timeout, tracking: inFlight
        )
    }

    /// What one provider answered in ``callAll(_:_:timeout:caller:)``.
    public struct ProviderAnswer: Sendable {
        /// On the wire: `{"plugin", "priority", "ok": VALUE}` or `{"plugin", "priority", "error": {"code", "message"}}`.
        public var value: Value {
            switch result {
            case .success(let v): return .fields(("plugin", .string(plugin)), ("priority", .int(Int64(priority))), ("ok", v))
            case .failure(let e):
                return .fields(("plugin", .string(plugin)), ("priority", .int(Int64(priority))),
                               ("error", .fields(("code", .string(e.wireCode)), ("message", .string(e.reason)))))
            }
        }
        /// The provider.
        public var plugin: String
        /// Its priority.
        public var priority: Int
        /// Its answer, or its error.
        public var result: Result<Value, RoutingError>
    }

    /// Calls every provider of `extensionPoint`, best first, one after the other; each
    /// answers or fails on its own. Throws ``RoutingError/Code/noProvider`` when none is registered.
    public func callAll(_ extensionPoint: String, _ argument: Value, timeout: Duration = Hub.defaultTimeout, caller: String? = nil) async throws -> [ProviderAnswer] {
        let all = providers(of: extensionPoint)
        guard !all.isEmpty else { throw RoutingError(.noProvider, "nobody provides \(extensionPoint)") }
        var answers: [ProviderAnswer] = []
        for provider in all {
            do {
                let value = try await provider.participant.invoke(
                    Invocation(kind: .job, name: extensionPoint, payload: argument, extra: caller.map { .fields(("caller", .string($0))) } ?? .nil),
                    timeout: timeout, tracking: inFlight
                )
                answers.append(ProviderAnswer(plugin: provider.owner, priority: provider.priority, result: .success(value)))
            } catch let error as RoutingError {
                answers.append(ProviderAnswer(plugin: provider.owner, priority: provider.priority, result: .failure(error)))
            } catch {
                answers.append(ProviderAnswer(plugin: provider.owner, priority: provider.priority, result: .failure(RoutingError(.handlerFailed, "\(error)", plugin: provider.owner))))
            }
        }
        return answers
    }

    /// Registered jobs, sorted by name, for listing.
    public var endpoints: [Endpoint] {
        state.withLockedValue { s in
            s.slots.map { name, slot in
                switch slot {
                case .active(let p): return Endpoint(name: name, owner: p.name, restarting: false, remote: p.isRemote)
                case .restarting(let owner, _, let remote): return Endpoint(name: name, owner: owner, restarting: true, remote: remote)
                }
            }
        }.sorted { $0.name < $1.name }
    }

    /// Every provider of every extension point, in call order per point.
    public var allProviders: [Provider] {
        let points = state.withLockedValue { Array($0.providers.keys) }.sorted()
        return points.flatMap { providers(of: $0) }
    }

    // MARK: Calls

    /// Calls `job` with `argument` and waits for its answer.
    ///
    /// Throws ``RoutingError/Code/unknownJob`` (naming the job), ``RoutingError/Code/timeout``
    /// after `timeout` (the plugin is not killed for it), ``RoutingError/Code/ownerGone`` at
    /// once when the owner goes away mid-call or does not come back in time, and
    /// ``RoutingError/Code/handlerFailed`` with the handler's own error.
    ///
    /// `caller` names the plugin making the call (the handler sees it as `extra.caller`);
    /// nil for an operator or the engine.
    public func call(_ job: String, _ argument: Value = .nil, timeout: Duration = Hub.defaultTimeout, caller: String? = nil) async throws -> Value {
        let start = NIODeadline.now()
        while true {
            let slot: Slot? = state.withLockedValue { $0.slots[job] }
            switch slot {
            case nil:
                // While the engine boots, the plugin serving the job may still be starting:
                // wait for the boot to end (within this call's own timeout), then look again.
                if let gate = state.withLockedValue({ $0.bootGate }) {
                    let remaining = timeout - elapsed(since: start)
                    if remaining > .zero, await gate.wait(atMost: remaining) { continue }
                }
                // Off the hot path: only a call that finds no owner asks why.
                if let departed = state.withLockedValue({ $0.departed[job] }) {
                    throw RoutingError(.ownerGone, "job \(job) is not served now: its plugin \(departed.owner) \(departed.reason)", plugin: departed.owner)
                }
                metrics.recordUnknownJob()
                throw RoutingError(.unknownJob, "no job named \(job) is registered")
            case .active(let participant):
                let remaining = timeout - elapsed(since: start)
                let extra: Value = caller.map { .fields(("caller", .string($0))) } ?? .nil
                do {
                    let result = try await participant.invoke(Invocation(kind: .job, name: job, payload: argument, extra: extra), timeout: remaining, tracking: inFlight)
                    metrics.record(job: job, plugin: participant.name, nanoseconds: (NIODeadline.now() - start).nanoseconds, error: nil)
                    return result
                } catch {
                    let code = (error as? RoutingError)?.code ?? .handlerFailed
                    metrics.record(job: job, plugin: participant.name, nanoseconds: (NIODeadline.now() - start).nanoseconds, error: code)
                    throw error
                }
            case .restarting(let owner, let deadline, _):
                try await waitForReturn(of: owner, job: job, until: min(deadline, start + timeout.timeAmount))
            }
        }
    }

    private func elapsed(since start: NIODeadline) -> Duration {
        .nanoseconds((NIODeadline.now() - start).nanoseconds)
    }

    /// Calls waiting now for a restarting owner to come back.
    var waitingCalls: Int { state.withLockedValue { $0.waiting.values.reduce(0) { $0 + $1.count } } }

    private func waitForReturn(of owner: String, job: String, until deadline: NIODeadline) async throws {
        if deadline <= .now() {
            throw RoutingError(.ownerGone, "plugin \(owner), which owns job \(job), did not come back in time", plugin: owner)
        }
        let timer = DeadlineSweeper.shared.schedule(at: deadline) { [weak self] in
            self?.expireWaiters(owner: owner, job: job)
        }
        defer { DeadlineSweeper.shared.cancel(timer) }
        let id = state.withLockedValue { $0.waiterIDs.makeID() }
        // A cancelled caller leaves at once; nothing keeps its continuation.
        try await parkCancellably(in: state) { s, continuation in
            guard case .restarting(let o, _, _)? = s.slots[job], o == owner else { return .success(()) }
            s.waiting[owner, default: WaitingLine()].append(id, continuation)
            return nil
        } unpark: { s in
            s.waiting[owner]?.remove(id)
        }
    }

    private func expireWaiters(owner: String, job: String) {
        let expired: [CheckedContinuation<Void, any Error>] = state.withLockedValue { s in
            s.waiting[owner]?.removeAll() ?? []
        }
        for w in expired {
            w.resume(throwing: RoutingError(.ownerGone, "plugin \(owner), which owns job \(job), did not come back in time", plugin: owner))
        }
    }

    /// Records the deadlines `owner`'s jobs declared, for callers that set none
    /// (``declaredTimeout(of:)``); a job without one is forgotten.
    public func declareTimeouts(_ timeouts: [String: Duration], jobs: [String]) {
        state.withLockedValue { s in
            for job in jobs { s.declaredTimeouts[job] = timeouts[job] }
        }
    }

    /// Whether `job` is served by a plugin in another process (or was, while its owner
    /// restarts): a call of it only sends, waits and reads the reply, never running a
    /// handler in this process. False for an unknown job.
    public func isServedRemotely(_ job: String) -> Bool {
        state.withLockedValue { s in
            switch s.slots[job] {
            case .active(let participant): return participant.isRemote
            case .restarting(_, _, let wasRemote): return wasRemote
            case nil: return false
            }
        }
    }

    /// The deadline `job` declared for calls that set none, if it declared one.
    public func declaredTimeout(of job: String) -> Duration? {
        state.withLockedValue { $0.declaredTimeouts[job] }
    }

    /// While `gate` has not fired, a call to a job no plugin has registered or reserved waits
    /// for it (up to the call's own timeout) and looks again, instead of failing at once: the
    /// engine sets one while it boots, when the plugin serving a job may still be starting.
    /// Nil lifts it.
    public func holdUnknownJobs(until gate: ReadinessSignal?) {
        state.withLockedValue { $0.bootGate = gate }
    }

    /// Reserves `jobs` for `owner` before it is active: calls made meanwhile wait for it to
    /// register (up to `within` and their own deadline); other plugins cannot take the names.
    public func reserve(jobs: [String], for owner: String, within: Duration, remote: Bool) throws {
        try state.withLockedValue { s in
            for job in jobs {
                if let slot = s.slots[job], slot.owner != owner {
                    throw RoutingError(.nameConflict, "job \(job) is already registered by plugin \(slot.owner); \(owner) cannot register it too", plugin: slot.owner)
                }
            }
            let deadline = NIODeadline.now() + within.timeAmount
            for job in jobs where s.slots[job] == nil {
                s.slots[job] = .restarting(owner: owner, deadline: deadline, wasRemote: remote)
            }
        }
    }

    // MARK: Departure

    /// Withdraws everything `owner` registered and fails its in-flight calls at once.
    ///
    /// With `expectBackWithin`, its job names stay reserved: calls made meanwhile wait for
    /// it to register again, up to that bound (and their own deadline), then fail.
    public func withdraw(owner: String, reason: String, expectBackWithin: Duration? = nil) {
        let (released, count): ([CheckedContinuation<Void, any Error>], Int) = state.withLockedValue { s in
            var count = 0
            for (name, slot) in s.slots where slot.owner == owner {
                count += 1
                if let bound = expectBackWithin, case .active(let p) = slot {
                    s.slots[name] = .restarting(owner: owner, deadline: .now() + bound.timeAmount, wasRemote: p.isRemote)
                } else if expectBackWithin == nil {
                    s.slots[name] = nil
                    s.departed[name] = (owner, reason)
                }
            }
            for point in Array(s.providers.keys) {
                s.providers[point]?.removeAll { $0.owner == owner }
                if s.providers[point]?.isEmpty == true { s.providers[point] = nil }
            }
            // Without a comeback, anyone waiting for this owner fails now.
            return (expectBackWithin == nil ? (s.waiting[owner]?.removeAll() ?? []) : [], count)
        }
        logger.debug("plugin withdrawn", metadata: [
            "plugin.name": "\(owner)", "hub.endpoints": "\(count)", "hub.reason": "\(reason)",
            "hub.expect_back": "\(expectBackWithin.map { "\($0)" } ?? "no")",
        ])
        inFlight.abort(owner: owner, reason: reason)
        for w in released {
            w.resume(throwing: RoutingError(.ownerGone, "plugin \(owner) went away: \(reason)", plugin: owner))
        }
    }
}
