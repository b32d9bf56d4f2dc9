import Routing

/// Every hook registration, each (event, phase) chain kept in run order as it changes:
/// higher priority first, ties by plugin name (``PrioritizedRegistration``'s order).
///
/// A registration finds its place by binary search and is inserted there; one replacing an
/// earlier registration of the same plugin, event and phase, and a withdrawal, find the old
/// one the same way, through an index by plugin. So registering n hooks costs O(n log n)
/// comparisons (plus moving the references after the insertion point, a memmove), where
/// re-sorting every chain on every change cost O(n² log n): 27 s of CPU for 5,000 hooks.
/// Not thread-safe: ``Hooks`` keeps one behind its lock.
struct HookChains {
    /// One chain's key: its event and phase.
    private struct Key: Hashable {
        var event: String
        var phase: HookPhase
    }

    /// Each chain, in run order.
    private var chains: [Key: [HookRegistration]] = [:]
    /// Each plugin's registrations: the chains it is in, with its priority there (what a
    /// binary search needs to find it again).
    private var byOwner: [String: [Key: Int]] = [:]

    /// Whether `a` runs before a registration of `owner` at `priority`: higher priority
    /// first, then plugin name.
    private static func runsBefore(_ a: HookRegistration, priority: Int, owner: String) -> Bool {
        if a.priority != priority { return a.priority > priority }
        return a.owner < owner
    }

    /// The first index in `chain` whose registration does not run before (`priority`, `owner`).
    private static func insertionPoint(_ chain: [HookRegistration], priority: Int, owner: String) -> Int {
        var low = 0
        var high = chain.count
        while low < high {
            let mid = low + (high - low) / 2
            if runsBefore(chain[mid], priority: priority, owner: owner) {
                low = mid + 1
            } else {
                high = mid
            }
        }
        return low
    }

    /// Adds `registration`, replacing its plugin's earlier one for the same event and phase.
    mutating func insert(_ registration: HookRegistration) {
        let key = Key(event: registration.event, phase: registration.phase)
        _ = remove(owner: registration.owner, from: key)
        let at = HookChains.insertionPoint(chains[key] ?? [], priority: registration.priority, owner: registration.owner)
        chains[key, default: []].insert(registration, at: at)
        byOwner[registration.owner, default: [:]][key] = registration.priority
    }

    /// Removes `owner`'s registration from the chain `key`, and returns it.
    private mutating func remove(owner: String, from key: Key) -> HookRegistration? {
        guard let priority = byOwner[owner]?[key] else { return nil }
        byOwner[owner]?[key] = nil
        if byOwner[owner]?.isEmpty == true { byOwner[owner] = nil }
        // No copy of the chain outlives this statement, so the removal below happens in
        // place instead of copying the whole chain first.
        let found: Int? = chains[key].flatMap { chain in
            let at = HookChains.insertionPoint(chain, priority: priority, owner: owner)
            return at < chain.count && chain[at].owner == owner ? at : nil
        }
        guard let at = found else { return nil }
        if chains[key]?.count == 1 { return chains.removeValue(forKey: key)?.first }
        return chains[key]?.remove(at: at)
    }

    /// Removes every registration of `owner`, and returns them.
    mutating func removeAll(owner: String) -> [HookRegistration] {
        guard let keys = byOwner[owner]?.keys else { return [] }
        return Array(keys).compactMap { remove(owner: owner, from: $0) }
    }

    /// The chain of `event` in `phase`, in run order.
    func chain(_ event: String, _ phase: HookPhase) -> [HookRegistration] {
        chains[Key(event: event, phase: phase)] ?? []
    }

    /// Every registration: by event, then phase (mutate, validate, observe), then run order.
    var all: [HookRegistration] {
        let phases: [HookPhase] = [.mutate, .validate, .observe]
        return chains.keys
            .sorted { a, b in
                if a.event != b.event { return a.event < b.event }
                return (phases.firstIndex(of: a.phase) ?? 0) < (phases.firstIndex(of: b.phase) ?? 0)
            }
            .flatMap { chains[$0] ?? [] }
    }
}
