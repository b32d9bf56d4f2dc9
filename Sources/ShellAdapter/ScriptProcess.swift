#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import NIOConcurrencyHelpers
import Spawn

/// What one run of a script produced.
struct ScriptRun: Sendable {
    var status: ExitStatus
    var stdout: String
    var stderr: String
}

/// Running a script: its own process group, stdin fed from a real thread, stdout and
/// stderr collected up to a bound, and the whole run — the script, everything it started,
/// and reading its output to the end — bounded by its timeout.
///
/// A call-mode run ends whole. When the script's main process exits, whatever it left in
/// its process group (`sleep 300 &` still holding stdout) is killed with SIGKILL, so the
/// pipes close, the call answers and its concurrency slot frees. When the timeout passes
/// first, the whole group is killed and the call fails saying so. A process that left the
/// group (`setsid`, `setpgid`) is beyond this: the daemon's per-plugin cgroup ends those;
/// if one keeps the script's stdout or stderr open, the call still ends at its timeout.
enum ScriptProcess {
    /// Output kept per stream; a script printing more is an error, not a memory problem.
    static let maxOutput = 16 << 20

    static func run(
        _ script: String, arguments: [String], environment: [String: String], stdin: [UInt8]?, timeout: Duration, what: String
    ) async throws -> ScriptRun {
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        var input: PipeDescriptors?
        var fds: [CInt: CInt] = [1: out.writeEnd, 2: err.writeEnd]
        if stdin != nil {
            let p = try PipeDescriptors.make()
            input = p
            fds[0] = p.readEnd
        }
        let collector: OutputCollector
        do {
            collector = try OutputCollector()
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] + [input?.readEnd, input?.writeEnd].compactMap({ $0 }) { close(fd) }
            throw ShellCallError.failed("cannot run \(script): \(error)")
        }
        let process: SpawnedProcess
        do {
            process = try ProcessGroups.spawn(SpawnOptions(
                executable: script, arguments: arguments, environment: environment, fileDescriptors: fds, newProcessGroup: true
            ))
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] + [input?.readEnd, input?.writeEnd].compactMap({ $0 }) { close(fd) }
            collector.discard()
            throw ShellCallError.failed("cannot run \(script): \(error)")
        }
        close(out.writeEnd)
        close(err.writeEnd)
        collector.start(stdout: out.readEnd, stderr: err.readEnd)
        if let input, let stdin {
            close(input.readEnd)
            writeAll(stdin, to: input.writeEnd, thenClose: true)
        }

        // One deadline for the whole run. When it passes: the group is killed if its leader
        // still runs (once the leader has exited, its group was killed at that moment), and
        // reading stops, whoever still holds the pipes.
        let interrupted = NIOLockedValueBox<(cancelled: Bool, leaderRunning: Bool)?>(nil)
        let end: @Sendable (_ cancelled: Bool) -> Void = { cancelled in
            // Under `interrupted`'s lock, so that the run cannot see its reading stopped
            // before it can see why (the reader may finish the moment `stop()` returns).
            let kill = interrupted.withLockedValue { i -> Bool in
                let running = process.exitStatus == nil
                let reading = collector.stop()
                guard running || reading else { return false }
                i = i ?? (cancelled, running)
                return true
            }
            if kill { process.signalGroup(SIGKILL) }
        }
        let token = DeadlineSweeper.shared.schedule(in: timeout) { end(false) }
        let (status, complete) = await withTaskCancellationHandler {
            let status = await process.waitForExit()
            ProcessGroups.ended(process)
            return (status, await collector.finished())
        } onCancel: {
            end(true)
        }
        DeadlineSweeper.shared.cancel(token)

        switch interrupted.withLockedValue({ $0 }) {
        case (cancelled: true, _)?:
            throw CancellationError()
        case (cancelled: false, leaderRunning: true)?:
            throw ShellCallError.timedOut("\(what) ran longer than its timeout of \(timeout); its process group was killed")
        case (cancelled: false, leaderRunning: false)?:
            throw ShellCallError.timedOut(
                "\(what) exited, but its stdout or stderr stayed open past its timeout of \(timeout), held by a process outside its process group (started with setsid?); its output was abandoned"
            )
        case nil:
            break
        }
        guard complete else {
            throw ShellCallError.failed("\(what): reading its output failed: \(collector.failure ?? "stopped")")
        }
        if collector.stdout.overflowed || collector.stderr.overflowed {
            throw ShellCallError.tooMuchOutput("\(what) printed more than \(maxOutput >> 20) MiB")
        }
        return ScriptRun(status: status, stdout: collector.stdout.text, stderr: collector.stderr.text)
    }

    /// Writes `bytes` to `fd` on a thread of its own (a script that does not read its
    /// stdin must not block the adapter), then closes it if asked.
    static func writeAll(_ bytes: [UInt8], to fd: CInt, thenClose: Bool, done: (@Sendable (Bool) -> Void)? = nil) {
        Foundation.Thread.detachNewThread {
            var offset = 0
            var ok = true
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { ok = false; break }
                offset += n
            }
            if thenClose { close(fd) }
            done?(ok)
        }
    }
}

/// The process groups of the scripts this adapter runs, so that a script's group can be
/// killed the moment its leader exits, and every group at once when the adapter exits.
public enum ProcessGroups {
    /// Leaders spawned and not yet ended (see ``ended(_:)``).
    private static let live = NIOLockedValueBox<Set<pid_t>>([])

    /// Spawns into a new process group and remembers it.
    static func spawn(_ options: SpawnOptions) throws -> SpawnedProcess {
        var options = options
        options.newProcessGroup = true
        // Registered under the lock, so that killAll() never misses a group just made.
        return try live.withLockedValue { groups in
            let process = try ProcessSpawner.spawn(options)
            groups.insert(process.pid)
            return process
        }
    }

    /// Call once `process` (a group leader from ``spawn(_:)``) has exited: kills what is
    /// left in its group and forgets it.
    ///
    /// The group's id is the leader's pid, and the leader has been reaped, so the kill goes
    /// to the id and not through `SpawnedProcess.signalGroup` (which refuses once the
    /// leader is gone). It is safe: while any member of the group lives, Linux keeps the
    /// id in use and never hands it to a new process; once none does, the id could only be
    /// another group's after the kernel's pid counter has gone all the way round, and this
    /// runs microseconds after the leader's exit.
    static func ended(_ process: SpawnedProcess) {
        live.withLockedValue { groups in
            guard groups.remove(process.pid) != nil else { return }
            _ = kill(-process.pid, SIGKILL)
        }
    }

    /// Kills every script process group this adapter still has (SIGKILL): for the
    /// adapter's own exit, so that no script it started outlives it.
    public static func killAll() {
        live.withLockedValue { groups in
            for pid in groups { _ = kill(-pid, SIGKILL) }
            groups.removeAll()
        }
    }
}

/// Reads a run's stdout and stderr on a thread of its own until both end, or until
/// ``stop()`` (the deadline) says to give up: a pipe held open by a process that escaped
/// the script's group must not hold the call.
final class OutputCollector: Sendable {
    let stdout = OutputBuffer()
    let stderr = OutputBuffer()

    private struct State {
        /// Set when the thread is done: whether both pipes reached their end.
        var complete: Bool?
        var stopRequested = false
        /// Why reading failed, when it was not asked to stop.
        var failure: String?
        var waiters: [CheckedContinuation<Bool, Never>] = []
    }

    private let state = NIOLockedValueBox(State())
    /// Written once to wake the thread up; both ends are closed when the thread is done.
    private let wake: PipeDescriptors

    init() throws {
        wake = try PipeDescriptors.make()
    }

    /// Starts reading; takes ownership of both descriptors.
    func start(stdout out: CInt, stderr err: CInt) {
        Foundation.Thread.detachNewThread { [self] in
            let complete = self.read(out, err)
            let waiters = state.withLockedValue { s in
                s.complete = complete
                close(wake.readEnd)
                close(wake.writeEnd)
                defer { s.waiters = [] }
                return s.waiters
            }
            for w in waiters { w.resume(returning: complete) }
        }
    }

    /// For a run that never started: closes the wake pipe.
    func discard() {
        state.withLockedValue { s in
            s.complete = false
            close(wake.readEnd)
            close(wake.writeEnd)
        }
    }

    /// Tells the thread to stop reading. Returns true if it was still reading.
    @discardableResult
    func stop() -> Bool {
        state.withLockedValue { s in
            guard s.complete == nil else { return false }
            if !s.stopRequested {
                s.stopRequested = true
                // The wake pipe is open until the thread sets `complete`, under this lock.
                var byte: UInt8 = 1
                _ = write(wake.writeEnd, &byte, 1)
            }
            return true
        }
    }

    /// Why reading failed on its own (not stopped), for the error.
    var failure: String? { state.withLockedValue { $0.failure } }

    /// Waits for the thread: true if both pipes reached their end, false if it was stopped first.
    func finished() async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let done: Bool? = state.withLockedValue { s in
                if let complete = s.complete { return complete }
                s.waiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    /// The thread's loop: poll both pipes and the wake pipe; read what comes.
    private func read(_ out: CInt, _ err: CInt) -> Bool {
        var fds = [
            pollfd(fd: out, events: Int16(POLLIN), revents: 0),
            pollfd(fd: err, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wake.readEnd, events: Int16(POLLIN), revents: 0),
        ]
        let buffers = [stdout, stderr]
        var open = 2
        var chunk = [UInt8](repeating: 0, count: 65536)
        defer {
            for i in 0..<2 where fds[i].fd >= 0 { close(fds[i].fd) }
        }
        while open > 0 {
            let rc = poll(&fds, nfds_t(fds.count), -1)
            if rc < 0 {
                if errno == EINTR { continue }
                let reason = "poll: \(String(cString: strerror(errno)))"
                state.withLockedValue { $0.failure = reason }
                return false
            }
            if fds[2].revents != 0 {
                let revents = fds[2].revents
                state.withLockedValue { s in
                    if !s.stopRequested { s.failure = "its wake pipe reported events \(revents) without a stop" }
                }
                return false
            }
            for i in 0..<2 where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(fds[i].fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    buffers[i].append(Array(chunk[0..<n]))
                } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                    close(fds[i].fd)
                    fds[i].fd = -1
                    open -= 1
                }
            }
        }
        return true
    }
}

/// Bytes collected from a pipe, up to ``ScriptProcess/maxOutput``.
final class OutputBuffer: Sendable {
    private let state = NIOLockedValueBox((bytes: [UInt8](), overflowed: false))

    func append(_ chunk: [UInt8]) {
        state.withLockedValue { s in
            if s.bytes.count + chunk.count > ScriptProcess.maxOutput { s.overflowed = true } else { s.bytes += chunk }
        }
    }

    var overflowed: Bool { state.withLockedValue { $0.overflowed } }
    var text: String { String(decoding: state.withLockedValue { $0.bytes }, as: UTF8.self) }
}
