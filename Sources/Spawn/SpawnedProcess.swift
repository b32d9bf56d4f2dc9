#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A running (or finished) child process.
///
/// Its exit is reaped by a dedicated thread blocked in `waitpid` for that pid only, so
/// no other part of the program can steal the status and nothing polls.
public final class SpawnedProcess: Sendable {
    /// The child's process id.
    public let pid: pid_t
    /// The resolved executable path.
    public let executable: String

    private struct State {
        var status: ExitStatus?
        var waiters: [CheckedContinuation<ExitStatus, Never>] = []
        /// Called once with the status (timed waits).
        var exitObservers: [@Sendable (ExitStatus) -> Void] = []
    }

    private let state = NIOLockedValueBox(State())

    init(pid: pid_t, executable: String) {
        self.pid = pid
        self.executable = executable
        let thread = ReaperThread(process: self)
        thread.start()
    }

    /// The exit status, once the child has ended.
    public var exitStatus: ExitStatus? { state.withLockedValue { $0.status } }

    /// Waits for the child to end.
    public func waitForExit() async -> ExitStatus {
        await withCheckedContinuation { continuation in
            let done: ExitStatus? = state.withLockedValue { s in
                if let status = s.status { return status }
                s.waiters.append(continuation)
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    /// Waits for the child to end, at most `timeout`; nil if it is still running then, or
    /// if the calling task is cancelled first. Starts no task: the reaper or one NIO timer
    /// resumes the waiter, whichever comes first.
    public func waitForExit(timeout: Duration) async -> ExitStatus? {
        if let status = exitStatus { return status }
        let slot = NIOLockedValueBox<CheckedContinuation<ExitStatus?, Never>?>(nil)
        let resume: @Sendable (ExitStatus?) -> Void = { status in slot.withLockedValue { $0.take() }?.resume(returning: status) }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ExitStatus?, Never>) in
                slot.withLockedValue { $0 = continuation }
                if Task.isCancelled { return resume(nil) }
                let timer = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: Self.timeAmount(timeout)) { resume(nil) }
                let registered: ExitStatus? = state.withLockedValue { s in
                    if let status = s.status { return status }
                    s.exitObservers.append { status in
                        timer.cancel()
                        resume(status)
                    }
                    return nil
                }
                if let registered {
                    timer.cancel()
                    resume(registered)
                }
            }
        } onCancel: {
            resume(nil)
        }
    }

    /// `duration` as a NIO amount, saturating (Spawn sits beside Chan, not above it).
    static func timeAmount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .nanoseconds(seconds < 0 ? 0 : .max) }
        return .nanoseconds(max(0, scaled.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue))
    }

    /// Sends `signal` to the child (ignored once it has been reaped, so a recycled pid is never hit).
    public func signal(_ signal: Int32) {
        state.withLockedValue { s in
            if s.status == nil { _ = kill(pid, signal) }
        }
    }

    /// Sends `signal` to the child's whole process group (when it was spawned into its own).
    public func signalGroup(_ signal: Int32) {
        state.withLockedValue { s in
            if s.status == nil { _ = kill(-pid, signal) }
        }
    }

    fileprivate func reaped(_ status: ExitStatus) {
        let (waiters, observers) = state.withLockedValue { s in
            s.status = status
            defer {
                s.waiters = []
                s.exitObservers = []
            }
            return (s.waiters, s.exitObservers)
        }
        for w in waiters { w.resume(returning: status) }
        for o in observers { o(status) }
    }
}

/// Blocks in `waitpid` for one child on its own thread.
private final class ReaperThread: Sendable {
    let process: SpawnedProcess

    init(process: SpawnedProcess) { self.process = process }

    func start() {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let me = Unmanaged<ReaperThread>.fromOpaque(raw).takeRetainedValue()
            me.run()
            return nil
        }, box.toOpaque())
        if rc == 0 {
            pthread_detach(thread)
        } else {
            box.release()
            // No thread: reap synchronously later is impossible, so block here instead of losing the status.
            run()
        }
    }

    func run() {
        var status: Int32 = 0
        while true {
            let rc = waitpid(process.pid, &status, 0)
            if rc == process.pid {
                process.reaped(ExitStatus(waitStatus: status))
                return
            }
            if rc < 0 && errno == EINTR { continue }
            // ECHILD: someone else reaped it; report what we can.
            process.reaped(.exited(-1))
            return
        }
    }
}
