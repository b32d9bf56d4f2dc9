import NIOConcurrencyHelpers

/// Lets one task at a time through per key; others wait in arrival order. A waiter whose
/// task is cancelled leaves the line at once with `CancellationError`.
public final class KeyedGate: Sendable {
    private struct State: Sendable {
        /// Keys someone is inside, with who waits for each.
        var waiting: [String: WaitingLine<Void>] = [:]
        var ids = WaitingLine<Void>()
    }

    private let state = NIOLockedValueBox(State())

    /// An open gate for every key.
    public init() {}

    /// Enters `key`'s gate, waiting for the task inside to ``leave(_:)``; pair with it.
    /// Throws `CancellationError` if the task is cancelled while it waits.
    public func enter(_ key: String) async throws {
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
    public func waiters(_ key: String) -> Int { state.withLockedValue { $0.waiting[key]?.count ?? 0 } }

    /// Leaves `key`'s gate; the next waiter, if any, enters.
    public func leave(_ key: String) {
        let next = state.withLockedValue { s -> CheckedContinuation<Void, any Error>? in
            guard let first = s.waiting[key]?.popFirst() else {
                s.waiting[key] = nil
                return nil
            }
            return first
        }
        next?.resume()
    }

    /// Runs `body` inside `key`'s gate: one `body` per key at a time, in arrival order.
    public func withGate<T: Sendable>(_ key: String, _ body: () async throws -> T) async throws -> T {
        try await enter(key)
        defer { leave(key) }
        return try await body()
    }
}
