import Chan
import Logging
import NIOConcurrencyHelpers
import Routing

/// Lifecycle hooks: receivers register for an event with a priority, a timeout and a
/// failure policy; mutating hooks run in order, each fed the previous one's output, with
/// every changed field attributed and conflicts refused; validators then run concurrently;
/// observers hear about events afterwards without blocking anyone.
///
/// Chains for different objects run concurrently; chains for the same object run one at a
/// time, in arrival order. There is no global lock around a chain.
public final class Hooks: Sendable {
    /// Every registration, each (event, phase) chain kept in run order as it changes.
    private let registry = NIOLockedValueBox(HookChains())
    /// Observer queues by event, then owner.
    private let observers = NIOLockedValueBox<[String: [String: ObserverQueue]]>([:])
    private let gate = KeyedGate()
    /// In-flight hook calls, by owner.
    public let inFlight = InFlightCalls()
    private let logger: Logger
    private let reporter = NIOLockedValueBox<(@Sendable (HookReport) -> Void)?>(nil)
    private let changeGuards = NIOLockedValueBox<[String: ChangeGuard]>([:])

    /// Decides whether a mutate hook's change may be applied: given the hook's plugin, the
    /// payload before and its answer, what it changed without the right, one entry per field
    /// with the grant that would allow it (empty: allowed).
    public typealias ChangeGuard = @Sendable (_ plugin: String, _ before: Value, _ after: Value) async -> [(field: String, missing: String)]

    /// Checks every mutate hook's answer for `event` with `check` before it is applied. A
    /// change it refuses fails the chain (``RoutingError/Code/notGranted``, naming plugin,
    /// field and grant) when the hook is required, and is dropped and logged when optional.
    public func setChangeGuard(_ event: String, _ check: ChangeGuard?) {
        changeGuards.withLockedValue { $0[event] = check }
    }

    /// Makes an empty set of hooks that logs skipped optional hooks and failed or dropped
    /// observer events to `logger`.
    public init(logger: Logger) {
        self.logger = logger
    }

    /// Tells `report` about every chain's outcome and every notification (the events service).
    public func setReporter(_ report: @escaping @Sendable (HookReport) -> Void) {
        reporter.withLockedValue { $0 = report }
    }

    /// Registers `participant` for `event`.
    public func register(
        _ event: String,
        phase: HookPhase = .mutate,
        priority: Int = 0,
        timeout: Duration = .seconds(2),
        policy: HookPolicy = .required,
        overrides: Bool = false,
        by participant: Participant
    ) {
        let registration = HookRegistration(
            event: event, owner: participant.name, phase: phase, priority: priority,
            timeout: timeout, policy: policy, overrides: overrides, participant: participant
        )
        registry.withLockedValue { $0.insert(registration) }
        if phase == .observe {
            let queue = ObserverQueue(registration: registration, logger: logger)
            let replaced = observers.withLockedValue { o in
                o[event, default: [:]].updateValue(queue, forKey: participant.name)
            }
            replaced?.stop()
        }
    }

    /// Removes every registration of `owner`; its in-flight hook calls fail at once, which
    /// skips it where it was optional and fails the operation where it was required.
    public func withdraw(owner: String, reason: String) {
        let removed = registry.withLockedValue { $0.removeAll(owner: owner) }
        let observed = removed.filter { $0.phase == .observe }.map(\.event)
        let stopped: [ObserverQueue] = observers.withLockedValue { o in
            observed.compactMap { event in
                defer { if o[event]?.isEmpty == true { o[event] = nil } }
                return o[event]?.removeValue(forKey: owner)
            }
        }
        for q in stopped { q.stop() }
        inFlight.abort(owner: owner, reason: reason)
    }

    /// Every registration, by event, phase, then run order.
    public var allRegistrations: [HookRegistration] {
        registry.withLockedValue { $0.all }
    }

    /// The registrations for `event` in `phase`, in run order.
    func registrations(_ event: String, _ phase: HookPhase) -> [HookRegistration] {
        registry.withLockedValue { $0.chain(event, phase) }
    }

    /// Runs the mutating chain and then the validators for `event` on `payload`.
    ///
    /// `object` names what the event is about (a container id): chains for the same object
    /// run one at a time. Throws ``RoutingError`` with ``RoutingError/Code/vetoed``,
    /// ``RoutingError/Code/fieldConflict``, ``RoutingError/Code/rejected``, or a required
    /// hook's own failure or timeout.
    public func run(_ event: String, payload: Value, object: String) async throws -> HookOutcome {
        let report = reporter.withLockedValue { $0 }
        do {
            let outcome = try await runChain(event, payload: payload, object: object)
            report?(HookReport(event: event, object: object, result: "ok", plugins: outcome.steps.map(\.plugin), skipped: outcome.skipped.map(\.plugin), detail: ""))
            return outcome
        } catch let error as RoutingError {
            report?(HookReport(event: event, object: object, result: "\(error.code)", plugins: error.plugin.map { [$0] } ?? [], skipped: [], detail: error.reason))
            throw error
        } catch {
            report?(HookReport(event: event, object: object, result: "failed", plugins: [], skipped: [], detail: "\(error)"))
            throw error
        }
    }

    private func runChain(_ event: String, payload: Value, object: String) async throws -> HookOutcome {
        try await gate.enter(object)
        defer { gate.leave(object) }

        var outcome = HookOutcome(payload: payload, attribution: [:], steps: [], skipped: [])
        var setBy: [(path: String, plugin: String)] = []
        for hook in registrations(event, .mutate) {
            let answer: Value
            do {
                answer = try await hook.participant.invoke(
                    Invocation(kind: .hook, name: event, payload: outcome.payload, extra: .fields(("phase", "mutate"), ("object", .string(object)))),
                    timeout: hook.timeout, tracking: inFlight
                )
            } catch {
                try skipOrFail(hook, error, into: &outcome)
                continue
            }
            if let reason = answer["veto"]?.stringValue {
                throw RoutingError(.vetoed, "plugin \(hook.owner) vetoed \(event) of \(object): \(reason)", plugin: hook.owner)
            }
            guard let next = answer["payload"] else {
                let error = RoutingError(.badAnswer, "plugin \(hook.owner) answered \(event) without \"payload\" or \"veto\"", plugin: hook.owner)
                try skipOrFail(hook, error, into: &outcome)
                continue
            }
            if let check = changeGuards.withLockedValue({ $0[event] }) {
                let refused = await check(hook.owner, outcome.payload, next)
                if !refused.isEmpty {
                    let what = refused.map { "\($0.field) needs the grant \($0.missing)" }.joined(separator: "; ")
                    let error = RoutingError(.notGranted, "plugin \(hook.owner) may not change \(event) of \(object) this way: \(what)", plugin: hook.owner)
                    try skipOrFail(hook, error, into: &outcome)
                    continue
                }
            }
            let changed = FieldChanges.between(outcome.payload, next)
            for path in changed {
                if let earlier = setBy.first(where: { $0.plugin != hook.owner && FieldChanges.overlap($0.path, path) }), !hook.overrides {
                    throw RoutingError(
                        .fieldConflict,
                        "plugins \(earlier.plugin) and \(hook.owner) both set \(path == earlier.path ? path : "\(earlier.path) / \(path)") in \(event) of \(object)",
                        plugin: hook.owner
                    )
                }
            }
            for path in changed {
                if hook.overrides { setBy.removeAll { FieldChanges.overlap($0.path, path) } }
                setBy.append((path, hook.owner))
            }
            outcome.payload = next
            outcome.steps.append(.init(plugin: hook.owner, changed: changed))
        }
        outcome.attribution = Dictionary(setBy.map { ($0.path, $0.plugin) }, uniquingKeysWith: { _, last in last })
        try await validate(event, object: object, outcome: &outcome)
        return outcome
    }

    private func skipOrFail(_ hook: HookRegistration, _ error: any Error, into outcome: inout HookOutcome) throws {
        switch hook.policy {
        case .required:
            if let e = error as? RoutingError { throw e }
            throw RoutingError(.handlerFailed, "hook \(hook.event) of plugin \(hook.owner) failed: \(error)", plugin: hook.owner)
        case .optional:
            logger.info("optional hook skipped", metadata: [
                "plugin.name": "\(hook.owner)", "hook.event": "\(hook.event)", "hook.error": "\(error)",
            ])
            outcome.skipped.append((hook.owner, "\(error)"))
        }
    }

    private func validate(_ event: String, object: String, outcome: inout HookOutcome) async throws {
        let validators = registrations(event, .validate)
        guard !validators.isEmpty else { return }
        let invocation = Invocation(
            kind: .hook, name: event, payload: outcome.payload,
            extra: .fields(("phase", "validate"), ("object", .string(object)), ("attribution", outcome.attributionValue))
        )
        let calls = inFlight
        let results: [(HookRegistration, Result<Value, any Error>)] = await withTaskGroup(of: (HookRegistration, Result<Value, any Error>).self) { group in
            for hook in validators {
                group.addTask {
                    do {
                        return (hook, .success(try await hook.participant.invoke(invocation, timeout: hook.timeout, tracking: calls)))
                    } catch {
                        return (hook, .failure(error))
                    }
                }
            }
            var all: [(HookRegistration, Result<Value, any Error>)] = []
            for await r in group { all.append(r) }
            return all
        }
        // Report in registration order, whatever order they finished in.
        for hook in validators {
            guard let (_, result) = results.first(where: { $0.0.owner == hook.owner }) else { continue }
            switch result {
            case .success(let answer):
                if let reason = answer["veto"]?.stringValue {
                    throw RoutingError(.rejected, "plugin \(hook.owner) rejected \(event) of \(object): \(reason)", plugin: hook.owner)
                }
            case .failure(let error):
                try skipOrFail(hook, error, into: &outcome)
            }
        }
    }

    /// Tells every observer of `event` about it, without waiting for any of them.
    /// Each observer hears events in the order they were notified.
    public func notify(_ event: String, payload: Value, object: String = "") {
        reporter.withLockedValue { $0 }?(HookReport(event: event, object: object, result: "notified", plugins: [], skipped: [], detail: "", payload: payload))
        let queues = observers.withLockedValue { o in o[event].map { Array($0.values) } ?? [] }
        for q in queues { q.enqueue(payload: payload, object: object) }
    }
}
