import NIOConcurrencyHelpers

/// Parks the calling task until someone resumes it, or until it is cancelled — the one way
/// every waiter in Plugboard waits (the Limiter, the hooks' per-object gate, calls waiting
/// for a restarting plugin, readiness).
///
/// `park` runs under `box`'s lock: it answers at once (a result) or stores the continuation
/// in the state and returns nil. If the task is cancelled, `unpark` runs under the same lock
/// and hands back the stored continuation, which is resumed with `CancellationError`; a
/// task cancelled before it parks is refused without parking. Nothing keeps a cancelled waiter.
public func parkCancellably<State: Sendable, T: Sendable>(
    in box: NIOLockedValueBox<State>,
    park: (inout State, CheckedContinuation<T, any Error>) -> Result<T, any Error>?,
    unpark: @escaping @Sendable (inout State) -> CheckedContinuation<T, any Error>?
) async throws -> T {
    try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            // Checked under the lock: a cancellation after this check runs `unpark` after
            // `park` has stored the continuation, so it is found.
            let now: Result<T, any Error>? = box.withLockedValue { state in
                if Task.isCancelled { return .failure(CancellationError()) }
                return park(&state, continuation)
            }
            if let now { continuation.resume(with: now) }
        }
    } onCancel: {
        box.withLockedValue { unpark(&$0) }?.resume(throwing: CancellationError())
    }
}

/// Continuations waiting in arrival order, each under an id so that a cancelled one can
/// take itself out. Kept inside its owner's locked state.
public struct WaitingLine<T: Sendable>: Sendable {
    private var nextID: UInt64 = 0
    private var entries: [(id: UInt64, continuation: CheckedContinuation<T, any Error>)] = []

    /// An empty line.
    public init() {}

    /// How many wait.
    public var count: Int { entries.count }

    /// Whether nobody waits.
    public var isEmpty: Bool { entries.isEmpty }

    /// A fresh id for the next waiter.
    public mutating func makeID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    /// Adds a waiter at the end.
    public mutating func append(_ id: UInt64, _ continuation: CheckedContinuation<T, any Error>) {
        entries.append((id, continuation))
    }

    /// Takes the first waiter out.
    public mutating func popFirst() -> CheckedContinuation<T, any Error>? {
        entries.isEmpty ? nil : entries.removeFirst().continuation
    }

    /// Takes the waiter with `id` out, if it still waits.
    public mutating func remove(_ id: UInt64) -> CheckedContinuation<T, any Error>? {
        guard let i = entries.firstIndex(where: { $0.id == id }) else { return nil }
        return entries.remove(at: i).continuation
    }

    /// Takes every waiter out.
    public mutating func removeAll() -> [CheckedContinuation<T, any Error>] {
        defer { entries = [] }
        return entries.map(\.continuation)
    }
}

/// A one-shot signal: fired once, waited for by anyone, cancellably.
public final class ReadinessSignal: Sendable {
    private struct State: Sendable {
        var fired = false
        var waiting = WaitingLine<Void>()
    }
    private let state = NIOLockedValueBox(State())

    /// A signal not yet fired.
    public init() {}

    /// Fires the signal: every waiter, present and future, goes on.
    public func fire() {
        let waiters = state.withLockedValue { s in
            s.fired = true
            return s.waiting.removeAll()
        }
        for w in waiters { w.resume() }
    }

    /// Returns once the signal has fired; throws `CancellationError` if the task is cancelled first.
    public func wait() async throws {
        let id = state.withLockedValue { $0.waiting.makeID() }
        try await parkCancellably(in: state) { s, continuation in
            if s.fired { return .success(()) }
            s.waiting.append(id, continuation)
            return nil
        } unpark: { s in
            s.waiting.remove(id)
        }
    }

    /// Waits at most `limit`; true when the signal fired.
    public func wait(atMost limit: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { (try? await self.wait()) != nil }
            group.addTask { try? await Task.sleep(for: limit); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }
}
