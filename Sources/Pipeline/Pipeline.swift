import Chan
import Logging
import NIOConcurrencyHelpers
import Routing

/// The ordered pipeline, with the proposal's rules exactly:
///
/// - Plugins register message types with a priority. A message goes to the highest-priority
///   plugin registered for its type that has not yet processed it in this run (ties by name).
/// - The handler returns a list of messages. One of the same type continues down the chain
///   in place of the original; other types are routed as new messages, each starting its own
///   run. A message never returns to the plugin that produced it, nor to any plugin that
///   already processed it in this run.
/// - Runs are bounded by ``Limits``: a loop ends with a clear error, not a hang.
public final class Pipeline: Sendable {
    /// One registration.
    public struct Registration: Sendable, PrioritizedRegistration {
        /// The message type handled.
        public var type: String
        /// The plugin that registered it.
        public var owner: String
        /// Higher gets a message first; ties go by plugin name.
        public var priority: Int
        /// How long one call to the handler may take.
        public var timeout: Duration
        /// Where the handler is reached.
        public var participant: Participant
        /// What its failure means for the run.
        public var policy: StepPolicy = .required
    }

    /// What a pipeline step's failure (an error, a timeout, its plugin gone) means.
    public enum StepPolicy: String, Sendable, Hashable, Codable {
        /// The run fails with the step's error.
        case required
        /// The step is skipped and recorded; the message goes on as it was.
        case optional
    }

    /// Bounds on one call to ``route(_:)``.
    public struct Limits: Sendable {
        /// Handler invocations in total.
        public var maxHops: Int
        /// Messages alive at once (queued plus final).
        public var maxMessages: Int

        /// Makes limits of `maxHops` handler calls and `maxMessages` live messages per run.
        public init(maxHops: Int = 64, maxMessages: Int = 256) {
            self.maxHops = maxHops
            self.maxMessages = maxMessages
        }
    }

    private let registrations = NIOLockedValueBox<[String: [Registration]]>([:])
    /// The bounds applied to every run.
    public let limits: Limits
    /// In-flight handler calls, by owner.
    public let inFlight = InFlightCalls()
    private let logger: Logger

    /// Makes an empty pipeline that bounds each run by `limits`.
    public init(limits: Limits = Limits(), logger: Logger) {
        self.limits = limits
        self.logger = logger
    }

    /// Registers `participant` for messages of `type`.
    public func register(type: String, priority: Int, timeout: Duration = .seconds(10), policy: StepPolicy = .required, by participant: Participant) {
        registrations.withLockedValue { r in
            r[type, default: []].removeAll { $0.owner == participant.name }
            r[type, default: []].append(Registration(type: type, owner: participant.name, priority: priority, timeout: timeout, participant: participant, policy: policy))
        }
    }

    /// Removes every registration of `owner` and fails its in-flight steps at once.
    public func withdraw(owner: String, reason: String) {
        registrations.withLockedValue { r in
            for type in Array(r.keys) {
                r[type]?.removeAll { $0.owner == owner }
                if r[type]?.isEmpty == true { r[type] = nil }
            }
        }
        inFlight.abort(owner: owner, reason: reason)
    }

    /// Every registration, by type then in routing order.
    public var allRegistrations: [Registration] {
        let snapshot = registrations.withLockedValue { $0 }
        return snapshot.keys.sorted().flatMap { snapshot[$0, default: []].inPriorityOrder() }
    }

    private struct Pending {
        var message: PipelineMessage
        var run: Int
        var seen: Set<String>
    }

    /// Routes `message` until every chain ends, and returns what came out and the path.
    ///
    /// A handler's error ends the run with that error (and the path so far in its reason).
    public func route(_ message: PipelineMessage) async throws -> PipelineResult {
        let snapshot = registrations.withLockedValue { $0 }
        var result = PipelineResult(final: [], path: [])
        // Depth-first, in output order, so the path is deterministic.
        var stack = [Pending(message: message, run: 0, seen: [])]
        var runs = 1
        while let current = stack.popLast() {
            let candidates = (snapshot[current.message.type] ?? []).inPriorityOrder()
            guard let next = candidates.first(where: { !current.seen.contains($0.owner) }) else {
                result.final.append(current.message)
                continue
            }
            guard result.path.count < limits.maxHops else {
                throw RoutingError(.hopLimit, "the pipeline run exceeded \(limits.maxHops) steps (a loop between plugins?); path: \(describe(result.path))")
            }
            let outputs: [PipelineMessage]
            do {
                let answer = try await next.participant.invoke(
                    Invocation(kind: .pipeline, name: current.message.type, payload: current.message.body),
                    timeout: next.timeout, tracking: inFlight
                )
                outputs = try Pipeline.parseOutputs(answer, plugin: next.owner)
            } catch let error as RoutingError where next.policy == .optional {
                // An optional step that fails is skipped: the message goes on as it was.
                result.skipped.append((plugin: next.owner, reason: error.reason))
                stack.append(Pending(message: current.message, run: current.run, seen: current.seen.union([next.owner])))
                continue
            }
            result.path.append(.init(run: current.run, plugin: next.owner, input: current.message, output: outputs))
            var spawned: [Pending] = []
            for output in outputs {
                if output.type == current.message.type {
                    spawned.append(Pending(message: output, run: current.run, seen: current.seen.union([next.owner])))
                } else {
                    spawned.append(Pending(message: output, run: runs, seen: [next.owner]))
                    runs += 1
                }
            }
            guard stack.count + spawned.count + result.final.count <= limits.maxMessages else {
                throw RoutingError(.fanOutLimit, "the pipeline run exceeded \(limits.maxMessages) messages; plugin \(next.owner) returned \(outputs.count) at step \(result.path.count)")
            }
            stack.append(contentsOf: spawned.reversed())
        }
        return result
    }

    /// A handler answers `[{"type": ..., "body": ...}, ...]`.
    static func parseOutputs(_ answer: Value, plugin: String) throws -> [PipelineMessage] {
        guard case .array(let items) = answer else {
            throw RoutingError(.badAnswer, "plugin \(plugin) must answer a pipeline message with a list of messages, got \(answer)", plugin: plugin)
        }
        return try items.map { item in
            guard let m = PipelineMessage(wire: item) else {
                throw RoutingError(.badAnswer, "plugin \(plugin) returned a message without a type: \(item)", plugin: plugin)
            }
            return m
        }
    }

    private func describe(_ path: [PipelineResult.Step]) -> String {
        path.suffix(8).map { "\($0.plugin)(\($0.input.type))" }.joined(separator: " → ")
    }
}
