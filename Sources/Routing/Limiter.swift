import NIOConcurrencyHelpers

/// At most `limit` holders at once; the rest wait in arrival order: a shell script's
/// processes, a plugin's engine calls in flight. A waiter whose task is cancelled leaves
/// the line at once with `CancellationError` and takes no place.
public final class Limiter: Sendable {
    private struct State: Sendable {
        var held = 0
        var waiting = WaitingLine<Void>()
    }

    private let limit: Int
    private let state = NIOLockedValueBox(State())

    /// A limiter admitting `limit` holders at once (at least one).
    public init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// How many are waiting now.
    public var queued: Int { state.withLockedValue { $0.waiting.count } }

    /// How many places are taken now.
    public var held: Int { state.withLockedValue { $0.held } }

    /// Runs `body` once a place is free; throws `CancellationError` if cancelled while waiting.
    public func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        try await acquire()
        defer { release() }
        return try await body()
    }

    /// Takes a place, waiting for one; pair with ``release()``. Throws `CancellationError`
    /// (holding no place) if the calling task is cancelled before a place is free.
    public func acquire() async throws {
        let id = state.withLockedValue { $0.waiting.makeID() }
        let limit = self.limit
        try await parkCancellably(in: state) { s, continuation in
            if s.held < limit {
                s.held += 1
                return .success(())
            }
            s.waiting.append(id, continuation)
            return nil
        } unpark: { s in
            s.waiting.remove(id)
        }
    }

    /// Gives a place back; it passes straight to the next in line, if any.
    public func release() {
        let next = state.withLockedValue { s -> CheckedContinuation<Void, any Error>? in
            if let next = s.waiting.popFirst() { return next }
            s.held -= 1
            return nil
        }
        next?.resume()
    }
}
