import NIOConcurrencyHelpers
import Testing
import TestSupport
@testable import Routing

@Suite("Limiter: a bounded number of holders, waiters that honour cancellation")
struct LimiterTests {
    @Test("never more than the limit hold a place; waiters go in arrival order")
    func limitAndOrder() async throws {
        let limiter = Limiter(limit: 2)
        try await limiter.acquire()
        try await limiter.acquire()
        #expect(limiter.held == 2)
        let order = Recorder()
        let first = Task { try await limiter.acquire(); order.append(1) }
        try await withDeadline(10, "the first waiter to queue") { while limiter.queued < 1 { await Task.yield() } }
        let second = Task { try await limiter.acquire(); order.append(2) }
        try await withDeadline(10, "the second waiter to queue") { while limiter.queued < 2 { await Task.yield() } }
        #expect(limiter.held == 2, "a waiter took a place early")
        limiter.release()
        try await first.value
        limiter.release()
        try await second.value
        #expect(order.values == [1, 2])
        #expect(limiter.held == 2)
    }

    @Test("a cancelled waiter leaves at once with CancellationError and takes no place")
    func cancelledWaiterLeaves() async throws {
        let limiter = Limiter(limit: 1)
        try await limiter.acquire()
        let waiter = Task { try await limiter.acquire() }
        try await withDeadline(10, "the waiter to queue") { while limiter.queued < 1 { await Task.yield() } }
        waiter.cancel()
        let outcome = try await withDeadline(10, "the cancelled waiter to return") { await waiter.result }
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(limiter.queued == 0)
        // The place goes back to nobody: the next acquire after a release gets it at once.
        limiter.release()
        #expect(limiter.held == 0)
        try await withDeadline(10, "a fresh acquire") { try await limiter.acquire() }
        #expect(limiter.held == 1)
    }

    @Test("a task cancelled before it asks is refused without waiting")
    func alreadyCancelled() async throws {
        let limiter = Limiter(limit: 1)
        try await limiter.acquire()
        let waiter = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await limiter.acquire()
        }
        let outcome = try await withDeadline(10, "the cancelled task") { await waiter.result }
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(limiter.queued == 0 && limiter.held == 1)
    }
}

@Suite("InFlightCalls: draining waits for the event and honours cancellation")
struct InFlightCallsTests {
    @Test("waitUntilDrained returns when the last call to the owner ends, and at once when cancelled")
    func drain() async throws {
        let calls = InFlightCalls()
        let id = calls.register(owner: "p") { _ in }
        #expect(calls.count(owner: "p") == 1)
        let drained = Task { await calls.waitUntilDrained(owner: "p") }
        let cancelled = Task { await calls.waitUntilDrained(owner: "p") }
        cancelled.cancel()
        try await withDeadline(10, "the cancelled drain waiter") { await cancelled.value }
        #expect(calls.count(owner: "p") == 1, "cancelling a waiter ended no call")
        calls.remove(id)
        try await withDeadline(10, "the drain") { await drained.value }
        #expect(calls.count(owner: "p") == 0)
    }

    @Test("abort fails every call of the owner with ownerGone, naming the reason")
    func abort() async throws {
        let calls = InFlightCalls()
        let seen = Recorder()
        _ = calls.register(owner: "p") { error in seen.append(error.code == .ownerGone && error.reason.contains("crashed") ? 1 : 0) }
        _ = calls.register(owner: "q") { _ in seen.append(9) }
        calls.abort(owner: "p", reason: "crashed")
        #expect(seen.values == [1])
        #expect(calls.count(owner: "q") == 1)
    }
}

/// Integers appended from several tasks.
final class Recorder: Sendable {
    private let box = NIOLockedValueBox<[Int]>([])
    func append(_ v: Int) { box.withLockedValue { $0.append(v) } }
    var values: [Int] { box.withLockedValue { $0 } }
}
