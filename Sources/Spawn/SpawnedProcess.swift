#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers

/// A running (or finished) child process.
///
/// Its exit is reaped by a dedicated thread blocked in `waitpid` for that pid only, so
/// no other part of the program can steal the status and nothing polls.
public final class SpawnedProcess: Sendable {
    /// The child's process id.
    public let pid: pid_t
    /// The resolved executable path.
    public let executable: String

    private let state = NIOLockedValueBox<(status: ExitStatus?, waiters: [CheckedContinuation<ExitStatus, Never>])>((nil, []))

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

    /// Waits for the child to end, at most `timeout`; nil if it is still running then.
    public func waitForExit(timeout: Duration) async -> ExitStatus? {
        if let status = exitStatus { return status }
        let once = NIOLockedValueBox<CheckedContinuation<ExitStatus?, Never>?>(nil)
        return await withCheckedContinuation { (continuation: CheckedContinuation<ExitStatus?, Never>) in
            once.withLockedValue { $0 = continuation }
            Task {
                let status = await self.waitForExit()
                once.withLockedValue { c in c.take() }?.resume(returning: status)
            }
            Task {
                try? await Task.sleep(for: timeout)
                once.withLockedValue { c in c.take() }?.resume(returning: nil)
            }
        }
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
        let waiters = state.withLockedValue { s -> [CheckedContinuation<ExitStatus, Never>] in
            s.status = status
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume(returning: status) }
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
