import Chan
import Logging
import NIOConcurrencyHelpers
import Routing

/// One observer's queue: events are delivered one at a time, in order, by its own task.
final class ObserverQueue: Sendable {
    let registration: HookRegistration
    private let stream: AsyncStream<(Value, String)>
    private let continuation: AsyncStream<(Value, String)>.Continuation
    private let task: Task<Void, Never>
    private let logger: Logger

    /// Past this many undelivered events the oldest are kept and new ones dropped, with a log line.
    static let capacity = 4096

    init(registration: HookRegistration, logger: Logger) {
        self.registration = registration
        self.logger = logger
        (stream, continuation) = AsyncStream.makeStream(of: (Value, String).self, bufferingPolicy: .bufferingOldest(ObserverQueue.capacity))
        let stream = self.stream
        task = Task {
            for await (payload, object) in stream {
                do {
                    _ = try await registration.participant.invoke(
                        Invocation(kind: .hook, name: registration.event, payload: payload, extra: .fields(("phase", "observe"), ("object", .string(object)))),
                        timeout: registration.timeout
                    )
                } catch {
                    logger.info("observer failed", metadata: [
                        "plugin.name": "\(registration.owner)", "hook.event": "\(registration.event)", "hook.error": "\(error)",
                    ])
                }
            }
        }
    }

    func enqueue(payload: Value, object: String) {
        if case .dropped = continuation.yield((payload, object)) {
            // The events issue brings per-subscriber loss records; here we say so in the log.
            logger.warning("observer queue full, event dropped", metadata: [
                "plugin.name": "\(registration.owner)", "hook.event": "\(registration.event)",
            ])
        }
    }

    func stop() {
        continuation.finish()
        task.cancel()
    }
}

/// Lets one task at a time through per key; others wait in arrival order. A waiter whose
/// task is cancelled leaves the line at once with `CancellationError`.
final class KeyedGate: Sendable {
    private struct State: Sendable {
        /// Keys someone is inside, with who waits for each.
        var waiting: [String: WaitingLine<Void>] = [:]
        var ids = WaitingLine<Void>()
    }

    private let state = NIOLockedValueBox(State())

    /// Enters `key`'s gate, waiting for the task inside to ``leave(_:)``; pair with it.
    /// Throws `CancellationError` if the task is cancelled while it waits.
    func enter(_ key: String) async throws {
        let id = state.withLockedValue { $0.ids.makeID() }
        try await parkCancellably(in: state) { s, continuation in
            guard s.waiting[key] != nil else {
                s.waiting[key] = WaitingLine()
                return .success(())
            }
            s.waiting[key]?.append(id, continuation)
            return nil
        } unpark: { s in
            s.waiting[key]?.remove(id)
        }
    }

    /// How many wait for `key` now.
    func waiters(_ key: String) -> Int { state.withLockedValue { $0.waiting[key]?.count ?? 0 } }

    /// Leaves `key`'s gate; the next waiter, if any, enters.
    func leave(_ key: String) {
        let next = state.withLockedValue { s -> CheckedContinuation<Void, any Error>? in
            guard let first = s.waiting[key]?.popFirst() else {
                s.waiting[key] = nil
                return nil
            }
            return first
        }
        next?.resume()
    }
}
