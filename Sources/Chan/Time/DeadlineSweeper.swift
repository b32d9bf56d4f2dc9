import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Many deadlines, one timer: adding and removing a deadline takes a lock and a dictionary
/// operation, never an event-loop hop; one scheduled sweep fires whatever is due and
/// schedules itself for the next earliest deadline.
///
/// A NIO timer per call (schedule plus cancel from off the loop) cost more than the rest
/// of an in-process call; see docs/BENCHMARKS.md.
public final class DeadlineSweeper: Sendable {
    private struct Entry {
        let deadline: NIODeadline
        let action: @Sendable () -> Void
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var next: UInt64 = 1
        var scheduledAt: NIODeadline?
    }

    private let state = NIOLockedValueBox(State())
    private let eventLoop: any EventLoop
    /// What time it is: `NIODeadline.now` unless a test injects its own clock.
    private let now: @Sendable () -> NIODeadline

    /// A sweeper whose sweeps run on `eventLoop`, reading the time from `now` (inject a
    /// manual clock in tests, with an `EmbeddedEventLoop` advanced in step with it).
    public init(eventLoop: any EventLoop, now: @escaping @Sendable () -> NIODeadline = { .now() }) {
        self.eventLoop = eventLoop
        self.now = now
    }

    /// A process-wide sweeper on one of NIO's singleton loops.
    public static let shared = DeadlineSweeper(eventLoop: MultiThreadedEventLoopGroup.singleton.next())

    /// Runs `action` at `deadline` unless ``cancel(_:)`` comes first. Returns a token.
    @discardableResult
    public func schedule(at deadline: NIODeadline, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        let (token, reschedule): (UInt64, Bool) = state.withLockedValue { s in
            let token = s.next
            s.next += 1
            s.entries[token] = Entry(deadline: deadline, action: action)
            if let at = s.scheduledAt, at <= deadline { return (token, false) }
            s.scheduledAt = deadline
            return (token, true)
        }
        if reschedule { arm(deadline) }
        return token
    }

    /// Runs `action` after `timeout` unless ``cancel(_:)`` comes first.
    @discardableResult
    public func schedule(in timeout: Duration, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        schedule(at: now() + timeout.timeAmount, action)
    }

    /// Forgets a deadline (a no-op if it already fired).
    public func cancel(_ token: UInt64) {
        _ = state.withLockedValue { $0.entries.removeValue(forKey: token) }
    }

    private func arm(_ deadline: NIODeadline) {
        eventLoop.scheduleTask(deadline: deadline) { [weak self] in self?.sweep() }
    }

    private func sweep() {
        let now = self.now()
        var due: [Entry] = []
        let next: NIODeadline? = state.withLockedValue { s in
            var earliest: NIODeadline?
            for (token, entry) in s.entries {
                if entry.deadline <= now {
                    due.append(entry)
                    s.entries.removeValue(forKey: token)
                } else if earliest.map({ entry.deadline < $0 }) ?? true {
                    earliest = entry.deadline
                }
            }
            // An earlier sweep may already be armed for a deadline added meanwhile.
            if let pending = s.scheduledAt, pending > now, let e = earliest, pending <= e { return nil }
            s.scheduledAt = earliest
            return earliest
        }
        for entry in due { entry.action() }
        if let next { arm(next) }
    }
}
