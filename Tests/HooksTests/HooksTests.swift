import Chan
import NIOConcurrencyHelpers
import Routing
import Testing
import TestSupport
@testable import Hooks

/// A mutating hook that sets `field` to `value` in a map payload.
func setter(_ name: String, _ field: String, _ value: Value) -> Participant {
    .inProcess(name) { invocation in
        var entries = invocation.payload.mapValue ?? []
        entries.removeAll { $0.key == .string(field) }
        entries.append((key: .string(field), value: value))
        return .fields(("payload", .map(entries)))
    }
}

/// A mutating hook that appends `item` to the `list` array.
func appender(_ name: String, _ list: String, _ item: Value) -> Participant {
    .inProcess(name) { invocation in
        var entries = invocation.payload.mapValue ?? []
        var items = invocation.payload[list]?.arrayValue ?? []
        items.append(item)
        entries.removeAll { $0.key == .string(list) }
        entries.append((key: .string(list), value: .array(items)))
        return .fields(("payload", .map(entries)))
    }
}

let spec: Value = .fields(("image", "busybox"), ("env", .array([])), ("mounts", .array([])))

@Suite("hooks: chains, vetoes, policies, attribution, validators, observers")
struct HooksTests {
    @Test("mutating hooks run in priority order, each fed the previous output")
    func chainOrder() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", priority: 10, by: appender("low", "env", "LOW=1"))
        hooks.register("container.create", priority: 90, by: appender("high", "env", "HIGH=1"))
        hooks.register("container.create", priority: 50, by: appender("mid-b", "env", "MIDB=1"))
        hooks.register("container.create", priority: 50, by: appender("mid-a", "env", "MIDA=1"))
        let outcome = try await hooks.run("container.create", payload: spec, object: "c1")
        #expect(outcome.payload["env"] == ["HIGH=1", "MIDA=1", "MIDB=1", "LOW=1"])
        #expect(outcome.steps.map(\.plugin) == ["high", "mid-a", "mid-b", "low"])
        #expect(outcome.attribution == ["env[0]": "high", "env[1]": "mid-a", "env[2]": "mid-b", "env[3]": "low"])
    }

    @Test("a hook can veto with a reason, and the hooks after it do not run")
    func veto() async throws {
        let hooks = Hooks(logger: quietLogger)
        let ranAfter = NIOLockedValueBox(false)
        hooks.register("container.create", priority: 10, by: .inProcess("policy") { _ in .fields(("veto", "privileged containers are not allowed")) })
        hooks.register("container.create", priority: 1, by: .inProcess("later") { i in
            ranAfter.withLockedValue { $0 = true }
            return .fields(("payload", i.payload))
        })
        await #expect {
            try await hooks.run("container.create", payload: spec, object: "c1")
        } throws: { error in
            let e = error as? RoutingError
            return e?.code == .vetoed && e?.plugin == "policy" && e?.reason.contains("privileged containers are not allowed") == true
        }
        #expect(ranAfter.withLockedValue { $0 } == false)
    }

    struct Boom: Error, CustomStringConvertible { var description: String { "disk on fire" } }

    @Test("a required hook's failure fails the operation with its error")
    func requiredFailure() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", policy: .required, by: .inProcess("fragile") { _ in throw Boom() })
        await #expect {
            try await hooks.run("container.create", payload: spec, object: "c1")
        } throws: { error in
            let e = error as? RoutingError
            return e?.code == .handlerFailed && e?.plugin == "fragile" && e?.reason.contains("disk on fire") == true
        }
    }

    @Test("an optional hook's failure is skipped and the payload goes on unchanged")
    func optionalFailure() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", priority: 20, policy: .optional, by: .inProcess("fragile") { _ in throw Boom() })
        hooks.register("container.create", priority: 10, by: appender("sturdy", "env", "OK=1"))
        let outcome = try await hooks.run("container.create", payload: spec, object: "c1")
        #expect(outcome.payload["env"] == ["OK=1"])
        #expect(outcome.skipped.map(\.plugin) == ["fragile"])
        #expect(outcome.steps.map(\.plugin) == ["sturdy"])
    }

    @Test("timeouts: a required hook fails the operation, an optional one is skipped")
    func timeouts() async throws {
        let hooks = Hooks(logger: quietLogger)
        let never = Signal()
        hooks.register("container.start", timeout: .milliseconds(100), policy: .optional, by: .inProcess("sleepy") { i in
            await never.wait()
            return .fields(("payload", i.payload))
        })
        let outcome = try await withDeadline { try await hooks.run("container.start", payload: spec, object: "c1") }
        #expect(outcome.skipped.first?.plugin == "sleepy")
        #expect(outcome.payload == spec)

        hooks.register("container.start", timeout: .milliseconds(100), policy: .required, by: .inProcess("sleepy") { i in
            await never.wait()
            return .fields(("payload", i.payload))
        })
        try await withDeadline {
            await #expect {
                try await hooks.run("container.start", payload: spec, object: "c1")
            } throws: { ($0 as? RoutingError)?.code == .timeout }
        }
        never.fire()
    }

    @Test("two hooks setting the same field conflict, naming both plugins and the field")
    func conflict() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", priority: 20, by: setter("first", "hostname", "alpha"))
        hooks.register("container.create", priority: 10, by: setter("second", "hostname", "beta"))
        await #expect {
            try await hooks.run("container.create", payload: spec, object: "c1")
        } throws: { error in
            let e = error as? RoutingError
            return e?.code == .fieldConflict && e?.reason.contains("first") == true && e?.reason.contains("second") == true && e?.reason.contains("hostname") == true
        }
    }

    @Test("a hook that declares it overrides may change an earlier hook's field, and takes the attribution")
    func override() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", priority: 20, by: setter("first", "hostname", "alpha"))
        hooks.register("container.create", priority: 10, overrides: true, by: setter("second", "hostname", "beta"))
        let outcome = try await hooks.run("container.create", payload: spec, object: "c1")
        #expect(outcome.payload["hostname"] == "beta")
        #expect(outcome.attribution["hostname"] == "second")
    }

    @Test("hooks that each add to a list do not conflict")
    func appendsDoNotConflict() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", priority: 20, by: appender("host-mount", "mounts", .fields(("source", "/data"), ("destination", "/var/data"))))
        hooks.register("container.create", priority: 10, by: appender("logs", "mounts", .fields(("source", "/log"), ("destination", "/var/log"))))
        let outcome = try await hooks.run("container.create", payload: spec, object: "c1")
        #expect(outcome.payload["mounts"]?.arrayValue?.count == 2)
        #expect(outcome.attribution == ["mounts[0]": "host-mount", "mounts[1]": "logs"])
    }

    @Test("validators see the final payload and its attribution, run concurrently, and may reject")
    func validators() async throws {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", by: appender("host-mount", "mounts", "/data"))
        let seen = NIOLockedValueBox<Value>(.nil)
        let bStarted = Signal()
        // a waits for b to have started: if validators ran one after another, a would wait forever.
        // Generous timeouts: the deadline is not what this test is about, and a loaded
        // machine can be slow to schedule the second validator.
        hooks.register("container.create", phase: .validate, priority: 10, timeout: .seconds(60), by: .inProcess("a") { i in
            seen.withLockedValue { $0 = i.extra["attribution"] ?? .nil }
            await bStarted.wait()
            return .fields(("ok", true))
        })
        hooks.register("container.create", phase: .validate, priority: 5, timeout: .seconds(60), by: .inProcess("b") { i in
            bStarted.fire()
            return i.payload["mounts"]?.arrayValue?.count == 1 ? .fields(("veto", "no host mounts here")) : .fields(("ok", true))
        })
        try await withDeadline {
            await #expect {
                try await hooks.run("container.create", payload: spec, object: "c1")
            } throws: { error in
                let e = error as? RoutingError
                return e?.code == .rejected && e?.plugin == "b" && e?.reason.contains("no host mounts here") == true
            }
        }
        #expect(seen.withLockedValue { $0 } == .fields(("mounts[0]", "host-mount")))
    }

    @Test("observers hear events in order without blocking the operation")
    func observers() async throws {
        let hooks = Hooks(logger: quietLogger)
        let gate = Signal()
        let heard = NIOLockedValueBox<[Value]>([])
        let allHeard = Signal()
        hooks.register("container.exited", phase: .observe, timeout: .seconds(60), by: .inProcess("auditor") { i in
            await gate.wait()
            let n = heard.withLockedValue { $0.append(i.payload); return $0.count }
            if n == 50 { allHeard.fire() }
            return .nil
        })
        // The observer is blocked; notifying must still return at once, fifty times.
        for i in 0..<50 { hooks.notify("container.exited", payload: .int(Int64(i)), object: "c\(i)") }
        #expect(heard.withLockedValue { $0.isEmpty })
        gate.fire()
        try await withDeadline { await allHeard.wait() }
        #expect(heard.withLockedValue { $0 } == (0..<50).map { Value.int(Int64($0)) })
    }

    @Test("chains for unrelated objects run concurrently; chains for one object run one at a time")
    func concurrency() async throws {
        let hooks = Hooks(logger: quietLogger)
        let startedFor = NIOLockedValueBox<[String: Signal]>(["a": Signal(), "b": Signal()])
        let active = NIOLockedValueBox<[String: Int]>([:])
        let maxActive = NIOLockedValueBox<[String: Int]>([:])
        hooks.register("container.create", timeout: .seconds(60), by: .inProcess("slow") { i in
            let object = i.extra["object"]?.stringValue ?? ""
            active.withLockedValue { a in
                a[object, default: 0] += 1
                maxActive.withLockedValue { $0[object] = max($0[object] ?? 0, a[object] ?? 0) }
            }
            startedFor.withLockedValue { $0[object] }?.fire()
            // a's chain finishes only once b's has started: that needs the two to overlap.
            let other = object.hasPrefix("a") ? "b" : "a"
            await startedFor.withLockedValue { $0[other] }?.wait()
            active.withLockedValue { $0[object, default: 0] -= 1 }
            return .fields(("payload", i.payload))
        })
        try await withDeadline(30, "two independent chains to overlap") {
            async let a = hooks.run("container.create", payload: spec, object: "a")
            async let b = hooks.run("container.create", payload: spec, object: "b")
            _ = try await (a, b)
        }
        // Now three chains for the same object: never more than one inside at once.
        try await withDeadline {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<3 { group.addTask { _ = try await hooks.run("container.create", payload: spec, object: "a") } }
                try await group.waitForAll()
            }
        }
        #expect(maxActive.withLockedValue { $0 } == ["a": 1, "b": 1])
    }

    @Test("registrations are listed with owner, priority and policy, in run order")
    func listing() {
        let hooks = Hooks(logger: quietLogger)
        hooks.register("container.create", priority: 1, policy: .optional, by: appender("x", "env", "X"))
        hooks.register("container.create", priority: 9, by: appender("y", "env", "Y"))
        hooks.register("container.create", phase: .validate, by: appender("v", "env", "V"))
        #expect(hooks.allRegistrations.map { "\($0.phase.rawValue):\($0.owner):\($0.priority):\($0.policy.rawValue)" }
            == ["mutate:y:9:required", "mutate:x:1:optional", "validate:v:0:required"])
    }
}

@Suite("hooks with a real subprocess participant", .serialized)
struct HooksSubprocessTests {
    @Test("a subprocess hook mutates, is attributed, and can veto")
    func subprocessHook() async throws {
        let hooks = Hooks(logger: quietLogger)
        let (sub, peer) = try await PeerProcess.participant("sub")
        hooks.register("container.create", priority: 50, timeout: .seconds(60), by: sub)
        hooks.register("container.create", priority: 10, timeout: .seconds(60), by: appender("local", "env", "LOCAL=1"))
        let outcome = try await withDeadline(60) { try await hooks.run("container.create", payload: spec, object: "c1") }
        #expect(outcome.payload["env"] == ["SUB=1", "LOCAL=1"])
        #expect(outcome.attribution == ["env[0]": "sub", "env[1]": "local"])
        await #expect {
            try await hooks.run("container.create", payload: .fields(("veto", true)), object: "c2")
        } throws: { ($0 as? RoutingError)?.code == .vetoed && ($0 as? RoutingError)?.reason.contains("sub says no") == true }
        await peer.stop()
    }

    @Test("a subprocess that dies mid-hook: skipped where optional, fails the operation where required")
    func subprocessDeath() async throws {
        let hooks = Hooks(logger: quietLogger)
        let (optionalSub, peerA) = try await PeerProcess.participant("flaky")
        hooks.register("container.create", timeout: .seconds(60), policy: .optional, by: optionalSub)
        let running = Task { try await hooks.run("container.create", payload: .fields(("hang", true)), object: "c1") }
        peerA.process.signal(9)
        let outcome = try await withDeadline(20) { try await running.value }
        #expect(outcome.skipped.first?.plugin == "flaky")

        let hooks2 = Hooks(logger: quietLogger)
        let (requiredSub, peerB) = try await PeerProcess.participant("vital")
        hooks2.register("container.create", timeout: .seconds(60), policy: .required, by: requiredSub)
        let running2 = Task { try await hooks2.run("container.create", payload: .fields(("hang", true)), object: "c1") }
        peerB.process.signal(9)
        try await withDeadline(20) {
            await #expect { try await running2.value } throws: { ($0 as? RoutingError)?.code == .ownerGone }
        }
    }
}

@Suite("KeyedGate: one task per key, waiters that honour cancellation")
struct KeyedGateTests {
    @Test("a cancelled waiter leaves the line at once; the next one still gets in when the key is left")
    func cancelledWaiter() async throws {
        let gate = KeyedGate()
        try await gate.enter("c1")
        let cancelled = Task { try await gate.enter("c1") }
        let next = Task { try await gate.enter("c1") }
        try await withDeadline(10, "both waiters to queue") { while gate.waiters("c1") < 2 { await Task.yield() } }
        // Another key is not held up by c1.
        try await withDeadline(10, "another key") { try await gate.enter("c2") }
        cancelled.cancel()
        let outcome = try await withDeadline(10, "the cancelled waiter") { await cancelled.result }
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(gate.waiters("c1") == 1)
        gate.leave("c1")
        try await withDeadline(10, "the next waiter to enter") { try await next.value }
        gate.leave("c1")
        #expect(gate.waiters("c1") == 0)
    }
}
