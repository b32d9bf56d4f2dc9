import NIOConcurrencyHelpers
import Spawn
import Testing
import TestSupport
@testable import Engine

/// The restart decision on made-up instants: no clock is read, nothing sleeps, so each
/// delay and each crash-loop verdict is asserted exactly.
@Suite("restart decision: policy, backoff and crash-loop window on an injected clock")
struct RestartDecisionTests {
    let t0 = ContinuousClock.now
    func at(_ seconds: Double) -> ContinuousClock.Instant { t0.advanced(by: .milliseconds(Int64(seconds * 1000))) }

    let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(1), resetAfter: .seconds(30), jitter: 0)
    let wide = CrashLoopLimit(restarts: 100, window: .seconds(60))

    @Test("the backoff doubles from the initial delay up to the maximum, exactly")
    func backoffSequence() {
        var history = RestartHistory()
        var delays: [RestartDecision] = []
        for i in 0..<7 {
            delays.append(history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: wide, activeSince: at(Double(i)), now: at(Double(i) + 0.5)))
        }
        #expect(delays == [100, 200, 400, 800, 1000, 1000, 1000].map { .restart(after: .milliseconds($0)) })
        #expect(history.consecutiveFailures == 7)
    }

    @Test("a run that lasted resetAfter starts the backoff again at the initial delay")
    func resetAfterHealthyRun() {
        var history = RestartHistory()
        _ = history.decide(after: .signalled(9), policy: .always, backoff: backoff, crashLoop: wide, activeSince: at(0), now: at(1))
        _ = history.decide(after: .signalled(9), policy: .always, backoff: backoff, crashLoop: wide, activeSince: at(1), now: at(2))
        // Active from 2 s to 32 s: 30 s healthy, exactly resetAfter.
        let next = history.decide(after: .signalled(9), policy: .always, backoff: backoff, crashLoop: wide, activeSince: at(2), now: at(32))
        #expect(next == .restart(after: .milliseconds(100)))
        // 29.999 s is not enough.
        let unhealthy = history.decide(after: .signalled(9), policy: .always, backoff: backoff, crashLoop: wide, activeSince: at(32), now: at(61.999))
        #expect(unhealthy == .restart(after: .milliseconds(200)))
    }

    @Test("more ends than the limit inside the window mark the plugin failed, naming the count and the last reason")
    func crashLoop() {
        var history = RestartHistory()
        let limit = CrashLoopLimit(restarts: 3, window: .seconds(10))
        for i in 0..<3 {
            let d = history.decide(after: .exited(2), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(Double(i)))
            guard case .restart = d else { Issue.record("end \(i + 1): \(d)"); return }
        }
        let fourth = history.decide(after: .exited(2), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(3))
        #expect(fourth == .stay(.failed, because: .crashLoop(ends: 4, window: .seconds(10), last: .exited(2))))
        if case .stay(_, let why) = fourth { #expect("\(why)" == "crash loop: 4 ends in 10s; last: exited with status 2") }
    }

    @Test("the daemon running out of descriptors is retried with backoff and never counts toward the crash loop")
    func daemonsFault() {
        var history = RestartHistory()
        let limit = CrashLoopLimit(restarts: 2, window: .seconds(60))
        for i in 0..<6 {
            let d = history.decide(after: .daemonOutOfResources("EMFILE"), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(Double(i)))
            guard case .restart = d else { Issue.record("attempt \(i): \(d)"); return }
        }
        // The plugin's own crashes still count, only they.
        _ = history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(7))
        _ = history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(8))
        let third = history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(9))
        #expect(third == .stay(.failed, because: .crashLoop(ends: 3, window: .seconds(60), last: .exited(1))))
        #expect(PluginEndReason.daemonOutOfResources("EMFILE").kind == "daemon-out-of-resources")
    }

    @Test("ends older than the window do not count: the window slides")
    func slidingWindow() {
        var history = RestartHistory()
        let limit = CrashLoopLimit(restarts: 2, window: .seconds(10))
        for t in [0.0, 1.0] {
            _ = history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(t))
        }
        // At 10.5 s the end at 0 s has left the window: 2 ends in it (1 s and 10.5 s), not 3.
        guard case .restart = history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(10.5)) else {
            Issue.record("the end at 0 s was counted after it left the window")
            return
        }
        // At 10.9 s three ends are inside (1, 10.5, 10.9): failed.
        let d = history.decide(after: .exited(1), policy: .onFailure, backoff: backoff, crashLoop: limit, activeSince: nil, now: at(10.9))
        #expect(d == .stay(.failed, because: .crashLoop(ends: 3, window: .seconds(10), last: .exited(1))))
    }

    @Test("the restart policy decides by the end reason's type", arguments: [
        (RestartPolicy.onFailure, PluginEndReason.exited(0), false, PluginState.stopped),
        (.onFailure, .exited(1), true, .failed),
        (.onFailure, .signalled(15), true, .failed),
        (.onFailure, .protocolViolation("bad frame", then: .exited(0)), true, .failed),
        (.onFailure, .sessionEnded("closed fd 4", then: .exited(0)), true, .failed),
        (.onFailure, .startFailed("no such file"), true, .failed),
        (.always, .exited(0), true, .stopped),
        (.never, .exited(0), false, .stopped),
        (.never, .exited(3), false, .failed),
    ])
    func policy(_ policy: RestartPolicy, _ reason: PluginEndReason, restarts: Bool, finalState: PluginState) {
        var history = RestartHistory()
        let d = history.decide(after: reason, policy: policy, backoff: backoff, crashLoop: wide, activeSince: nil, now: at(0))
        if restarts {
            #expect(d == .restart(after: .milliseconds(100)))
        } else {
            #expect(d == .stay(finalState, because: .policy(policy, reason)))
        }
    }

    @Test("jitter scales the delay by the injected fraction")
    func jitter() {
        var history = RestartHistory()
        var jittery = backoff
        jittery.jitter = 0.2
        let up = history.decide(after: .exited(1), policy: .always, backoff: jittery, crashLoop: wide, activeSince: nil, now: at(0)) { range in range.upperBound }
        #expect(up == .restart(after: .milliseconds(120)))
        let down = history.decide(after: .exited(1), policy: .always, backoff: jittery, crashLoop: wide, activeSince: nil, now: at(1)) { range in range.lowerBound }
        #expect(down == .restart(after: .milliseconds(160)))
    }

    @Test("end reasons render for the log and plugin inspect")
    func rendering() {
        #expect("\(PluginEndReason(.exited(3)))" == "exited with status 3")
        #expect(PluginEndReason(.signaled(9)) == .signalled(9))
        #expect("\(PluginEndReason.protocolViolation("malformed frame", then: .exited(0)))" == "broke the protocol (malformed frame); then exited with status 0")
        #expect(PluginEndReason.protocolViolation("x", then: nil).kind == "protocol-violation")
    }
}

/// A clock whose sleeps return at once, recording what was asked: the supervisor's backoff
/// is observed exactly, with delays that would take hours on the real clock.
final class RecordingClock: Clock, Sendable {
    struct Instant: InstantProtocol {
        var offset: Duration
        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (a: Instant, b: Instant) -> Bool { a.offset < b.offset }
    }

    private let state = NIOLockedValueBox<(now: Instant, slept: [Duration])>((Instant(offset: .zero), []))
    var now: Instant { state.withLockedValue { $0.now } }
    var minimumResolution: Duration { .zero }
    var slept: [Duration] { state.withLockedValue { $0.slept } }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        try Task.checkCancellation()
        state.withLockedValue { s in
            s.slept.append(s.now.duration(to: deadline))
            s.now = deadline
        }
    }
}

@Suite("the supervisor waits on the engine's clock")
struct SupervisorClockTests {
    @Test("a crash-looping plugin is restarted after exactly the backoff delays, then marked failed")
    func backoffOnInjectedClock() async throws {
        let clock = RecordingClock()
        let engine = Engine(logger: quietLogger, clock: clock)
        let events = engine.events()
        // Delays of minutes: only an injected clock lets this test finish.
        let backoff = Backoff(initial: .seconds(600), maximum: .seconds(3000), jitter: 0)
        try await engine.boot([try testPlugin("loopy", "crash-on-restart", backoff: backoff, crashLoop: CrashLoopLimit(restarts: 3, window: .seconds(60)))])
        let crash = Task { try await engine.hub.call("loopy.crash", timeout: .seconds(60)) }
        let failed = try await waitForEvent(events, "the plugin to be marked failed") { $0.plugin == "loopy" && $0.state == .failed }
        _ = try? await crash.value
        #expect(failed.detail.contains("crash loop"))
        #expect(clock.slept == [.seconds(600), .seconds(1200), .seconds(2400)])
        await engine.shutdown(grace: .seconds(1))
    }
}
