import NIOConcurrencyHelpers

/// The tasks a long-lived part owns (a session's bridge pumps, a server's connections):
/// each leaves the set when it ends, and ``cancelAll()`` — called when the owner ends —
/// cancels the rest, so nothing it started outlives it. Adding to a set already cancelled
/// starts nothing.
public final class TaskSet: Sendable {
    private struct State {
        var next: UInt64 = 0
        var tasks: [UInt64: Task<Void, Never>] = [:]
        var cancelled = false
    }
    private let state = NIOLockedValueBox(State())

    /// An empty set.
    public init() {}

    /// Tasks running now.
    public var count: Int { state.withLockedValue { $0.tasks.count } }

    /// Runs `body` in a task this set owns. Returns false (and runs nothing) once the set
    /// has been cancelled.
    @discardableResult
    public func run(_ body: @escaping @Sendable () async -> Void) -> Bool {
        // The task is registered under the lock before it can finish and remove itself.
        state.withLockedValue { s in
            guard !s.cancelled else { return false }
            let id = s.next
            s.next += 1
            s.tasks[id] = Task { [weak self] in
                await body()
                self?.state.withLockedValue { _ = $0.tasks.removeValue(forKey: id) }
            }
            return true
        }
    }

    /// Cancels every task in the set and refuses new ones.
    public func cancelAll() {
        let tasks = state.withLockedValue { s in
            s.cancelled = true
            defer { s.tasks = [:] }
            return Array(s.tasks.values)
        }
        for t in tasks { t.cancel() }
    }
}
