import Chan
import NIOConcurrencyHelpers
import Remote
import Routing

/// A remote plugin's connection once it said HELLO and passed its checks.
struct RemoteArrival: Sendable {
    let session: Session
    let description: PluginDescription
    let peer: RemotePeer
}

/// Hands connections from the listeners to the supervisors of remote plugins. One waiter
/// per name (its supervisor, between connections); a connection that comes while its
/// supervisor is between two waits is kept until it waits again; a second one replaces it
/// and the first is refused.
final class RemoteArrivals: Sendable {
    private struct State {
        var waiting: [String: CheckedContinuation<RemoteArrival, any Error>] = [:]
        var pending: [String: RemoteArrival] = [:]
    }
    private let box = NIOLockedValueBox(State())

    /// Waits for the next connection of `name`; throws `CancellationError` when cancelled.
    func next(for name: String) async throws -> RemoteArrival {
        try await parkCancellably(in: box) { state, continuation in
            if let arrival = state.pending.removeValue(forKey: name) { return .success(arrival) }
            if let earlier = state.waiting[name] {
                // Only its supervisor waits; a second waiter replaces a stale one.
                earlier.resume(throwing: CancellationError())
            }
            state.waiting[name] = continuation
            return nil
        } unpark: { state in
            state.waiting.removeValue(forKey: name)
        }
    }

    /// Gives `arrival` to `name`'s supervisor (now, or when it next waits).
    func offer(_ arrival: RemoteArrival, to name: String) {
        let (waiter, replaced): (CheckedContinuation<RemoteArrival, any Error>?, RemoteArrival?) = box.withLockedValue { state in
            if let waiter = state.waiting.removeValue(forKey: name) { return (waiter, nil) }
            let replaced = state.pending[name]
            state.pending[name] = arrival
            return (nil, replaced)
        }
        replaced?.session.close(reason: "refused: a newer connection claims plugin \(name)")
        waiter?.resume(returning: arrival)
    }

    /// Refuses a kept connection of `name` (its plugin is stopping).
    func drop(_ name: String, reason: String) {
        let dropped = box.withLockedValue { $0.pending.removeValue(forKey: name) }
        dropped?.session.close(reason: "refused: \(reason)")
    }
}
