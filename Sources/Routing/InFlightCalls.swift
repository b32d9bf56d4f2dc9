import Chan
import NIOConcurrencyHelpers

/// Calls that are in flight, by owner, so that an owner's departure ends them at once.
public final class InFlightCalls: Sendable {
    private struct Entry {
        let owner: String
        let abort: @Sendable (RoutingError) -> Void
    }

    private let state = NIOLockedValueBox<(next: UInt64, entries: [UInt64: Entry], drainWaiters: [(id: UInt64, owner: String, continuation: CheckedContinuation<Void, Never>)])>((1, [:], []))

    /// An empty tracker.
    public init() {}

    /// Calls in flight now, by owner (a queue-depth gauge).
    public var countsByOwner: [String: Int] {
        state.withLockedValue { s in
            var counts: [String: Int] = [:]
            for entry in s.entries.values { counts[entry.owner, default: 0] += 1 }
            return counts
        }
    }

    func register(owner: String, abort: @escaping @Sendable (RoutingError) -> Void) -> UInt64 {
        state.withLockedValue { s in
            let id = s.next
            s.next += 1
            s.entries[id] = Entry(owner: owner, abort: abort)
            return id
        }
    }

    func remove(_ id: UInt64) {
        let drained: [CheckedContinuation<Void, Never>] = state.withLockedValue { s in
            guard let entry = s.entries.removeValue(forKey: id) else { return [] }
            return Self.takeDrained(&s, owner: entry.owner)
        }
        for c in drained { c.resume() }
    }

    private static func takeDrained(
        _ s: inout (next: UInt64, entries: [UInt64: Entry], drainWaiters: [(id: UInt64, owner: String, continuation: CheckedContinuation<Void, Never>)]),
        owner: String
    ) -> [CheckedContinuation<Void, Never>] {
        guard !s.entries.values.contains(where: { $0.owner == owner }) else { return [] }
        let ready = s.drainWaiters.filter { $0.owner == owner }.map(\.continuation)
        s.drainWaiters.removeAll { $0.owner == owner }
        return ready
    }

    /// Returns once no call to `owner` is in flight (at once if none is), or when the
    /// calling task is cancelled: bound it with a timeout of your own.
    public func waitUntilDrained(owner: String) async {
        let id = state.withLockedValue { s -> UInt64 in
            defer { s.next += 1 }
            return s.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now: Bool = state.withLockedValue { s in
                    if Task.isCancelled || !s.entries.values.contains(where: { $0.owner == owner }) { return true }
                    s.drainWaiters.append((id, owner, continuation))
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLockedValue { s -> CheckedContinuation<Void, Never>? in
                guard let i = s.drainWaiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.drainWaiters.remove(at: i).continuation
            }
            waiter?.resume()
        }
    }

    /// Fails every in-flight call to `owner` with ``RoutingError/Code/ownerGone``.
    public func abort(owner: String, reason: String) {
        let (victims, drained): ([Entry], [CheckedContinuation<Void, Never>]) = state.withLockedValue { s in
            let ids = s.entries.filter { $0.value.owner == owner }.map(\.key)
            let removed = ids.compactMap { s.entries.removeValue(forKey: $0) }
            return (removed, Self.takeDrained(&s, owner: owner))
        }
        for c in drained { c.resume() }
        for v in victims {
            v.abort(RoutingError(.ownerGone, "plugin \(owner) went away: \(reason)", plugin: owner))
        }
    }

    /// How many calls are in flight to `owner`.
    public func count(owner: String) -> Int {
        state.withLockedValue { s in s.entries.values.filter { $0.owner == owner }.count }
    }
}

extension InFlightCalls {
    /// The id the next tracked call will get: calls tracked before this moment have smaller ids.
    public var watermark: UInt64 { state.withLockedValue { $0.next } }

    /// Whether a call to `owner` tracked before `mark` (a ``watermark``) is still in flight.
    public func hasCalls(owner: String, before mark: UInt64) -> Bool {
        state.withLockedValue { s in s.entries.contains { $0.key < mark && $0.value.owner == owner } }
    }
}
