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
