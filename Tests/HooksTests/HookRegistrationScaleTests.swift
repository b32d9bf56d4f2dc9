import Chan
import Routing
import Testing
import TestSupport
@testable import Hooks

/// Registering many hooks (5,000 used to take 27 s of CPU: every registration re-sorted
/// every chain). Order is asserted here, never time.
@Suite("hook registration at scale: chains stay in order through registrations, re-registrations and withdrawals")
struct HookRegistrationScaleTests {
    /// What a chain's order must be: priority, higher first, then plugin name.
    func expectedOrder(_ registrations: [(owner: String, priority: Int)]) -> [String] {
        registrations.sorted { a, b in a.priority != b.priority ? a.priority > b.priority : a.owner < b.owner }.map(\.owner)
    }

    @Test("10,000 hooks on one event register in run order: priority, then plugin name")
    func tenThousand() async throws {
        let hooks = Hooks(logger: quietLogger)
        var generator = SplitMix(seed: 15)
        var registered: [String: Int] = [:]
        // Few distinct priorities, so that most places are decided by the name tie-break; the
        // names are registered in a shuffled order.
        var names = (0..<10_000).map { "plugin-\($0)" }
        names.shuffle(using: &generator)
        for name in names {
            let priority = Int(generator.next() % 50) - 25
            registered[name] = priority
            hooks.register("container.create", priority: priority, by: .inProcess(name) { $0.payload })
        }
        let chain = hooks.registrations("container.create", .mutate)
        #expect(chain.count == 10_000)
        #expect(chain.map(\.owner) == expectedOrder(registered.map { ($0.key, $0.value) }))
        #expect(chain.map(\.owner) == chain.inPriorityOrder().map(\.owner))

        // Re-registering moves a plugin to its new place (one registration per plugin, event and phase).
        for name in names.prefix(2_000) {
            let priority = Int(generator.next() % 50) - 25
            registered[name] = priority
            hooks.register("container.create", priority: priority, by: .inProcess(name) { $0.payload })
        }
        // Withdrawing removes a plugin from every chain it is in.
        for name in names.suffix(1_000) {
            hooks.withdraw(owner: name, reason: "removed")
            registered[name] = nil
        }
        let after = hooks.registrations("container.create", .mutate)
        #expect(after.count == 9_000)
        #expect(after.map(\.owner) == expectedOrder(registered.map { ($0.key, $0.value) }))
        #expect(hooks.allRegistrations.map(\.owner) == after.map(\.owner))
    }

    @Test("many events and phases: each chain in order, the listing by event, phase, then run order")
    func manyEvents() async throws {
        let hooks = Hooks(logger: quietLogger)
        var generator = SplitMix(seed: 7)
        var expected: [String: [HookPhase: [(owner: String, priority: Int)]]] = [:]
        for i in 0..<10_000 {
            let event = "event.\(i % 100)"
            let phase: HookPhase = [.mutate, .validate, .observe][i % 3]
            let owner = "p\(generator.next() % 2_000)"
            let priority = Int(generator.next() % 5)
            hooks.register(event, phase: phase, priority: priority, by: .inProcess(owner) { _ in .fields(("ok", true)) })
            expected[event, default: [:]][phase, default: []].removeAll { $0.owner == owner }
            expected[event, default: [:]][phase, default: []].append((owner, priority))
        }
        for event in expected.keys {
            for (phase, registrations) in expected[event] ?? [:] {
                #expect(hooks.registrations(event, phase).map(\.owner) == expectedOrder(registrations), "\(event) \(phase)")
            }
        }
        let listing = hooks.allRegistrations
        #expect(listing.count == expected.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.count } })
        let phases: [HookPhase] = [.mutate, .validate, .observe]
        let keys = listing.map { ($0.event, phases.firstIndex(of: $0.phase) ?? 0) }
        #expect(zip(keys, keys.dropFirst()).allSatisfy { a, b in a.0 < b.0 || (a.0 == b.0 && a.1 <= b.1) })

        // Withdrawing a plugin takes it out of every chain, observers included.
        hooks.withdraw(owner: "p1", reason: "gone")
        #expect(!hooks.allRegistrations.contains { $0.owner == "p1" })
    }

    @Test("a chain of many hooks still runs in its order")
    func runsInOrder() async throws {
        let hooks = Hooks(logger: quietLogger)
        for i in 0..<500 {
            hooks.register("count", priority: i % 7, by: .inProcess(String(format: "h%04d", i)) { invocation in
                let seen = invocation.payload["seen"]?.arrayValue ?? []
                return .fields(("payload", .fields(("seen", .array(seen + [.int(Int64(i))])))))
            })
        }
        let outcome = try await hooks.run("count", payload: .fields(("seen", .array([]))), object: "o")
        let ran = outcome.steps.map(\.plugin)
        #expect(ran.count == 500)
        #expect(ran == hooks.registrations("count", .mutate).map(\.owner))
        let expected: [(owner: String, priority: Int)] = (0..<500).map { (String(format: "h%04d", $0), $0 % 7) }
        #expect(ran == expectedOrder(expected))
    }
}

/// A small seeded generator, so a failure can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
