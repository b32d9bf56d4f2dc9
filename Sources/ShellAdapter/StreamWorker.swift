#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import NIOConcurrencyHelpers
import Routing
import Spawn

/// `mode=stream`: one long-running process that reads one JSON request per line on stdin
/// and writes one JSON reply per line on stdout. Requests go one at a time, in order. A
/// process that exits, times out or prints a line that is not JSON fails that call with
/// what happened and is started again for the next one.
///
/// The process runs in its own process group and ends whole: when it is stopped or
/// restarted its group is killed, and when it exits on its own whatever it left in its
/// group is killed at that moment (``ProcessGroups``).
actor StreamWorker {
    private let script: String
    private let arguments: [String]
    private let environment: [String: String]
    private var process: SpawnedProcess?
    private var input: CInt = -1
    private var lines: LineQueue?
    private var stderr: OutputBuffer?
    private let gate = Limiter(limit: 1)
    /// The tasks reading the script's stdout and stderr.
    private let readers = TaskSet()

    init(script: String, arguments: [String], environment: [String: String]) {
        self.script = script
        self.arguments = arguments
        self.environment = environment
    }

    /// Sends `request`, returns the decoded reply line.
    func call(_ request: Value, timeout: Duration, what: String) async throws -> Value {
        try await gate.run { try await self.exchange(request, timeout: timeout, what: what) }
    }

    private func exchange(_ request: Value, timeout: Duration, what: String) async throws -> Value {
        let deadline = ContinuousClock.now + timeout
        let (process, lines) = try startIfNeeded()
        var bytes = Array(try ScriptRunner.jsonEncoder.encode(request))
        bytes.append(UInt8(ascii: "\n"))
        ScriptProcess.writeAll(bytes, to: input, thenClose: false)
        switch await lines.next(timeout: timeout) {
        case .line(let text):
            do {
                return try JSONDecoder().decode(Value.self, from: Data(text.utf8))
            } catch {
                stop()
                throw ShellCallError.garbage("\(what) (stream mode) printed a line that is not JSON: \(text.prefix(200)); it will be restarted")
            }
        case .timedOut:
            stop()
            throw ShellCallError.timedOut("\(what) (stream mode) did not answer within \(timeout.short); its process group was killed and will be restarted")
        case .ended:
            // Its stdout closed; it may still be running (it closed stdout and went on):
            // it gets what is left of the timeout to exit, then its group is killed.
            if await process.waitForExit(timeout: ContinuousClock.now.duration(to: deadline)) == nil {
                process.signalGroup(SIGKILL)
            }
            let status = await process.waitForExit()
            let said = stderr?.text.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            self.process = nil
            throw ShellCallError.failed("\(what) (stream mode) \(status) without answering" + (said.isEmpty ? "" : ": \(said.suffix(2000))"))
        }
    }

    private func startIfNeeded() throws -> (SpawnedProcess, LineQueue) {
        if let process, process.exitStatus == nil, let lines { return (process, lines) }
        if input >= 0 { close(input) }
        let stdin = try PipeDescriptors.make()
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        var env = environment
        env["PLUGBOARD_MODE"] = "stream"
        let started: SpawnedProcess
        do {
            started = try ProcessGroups.spawn(SpawnOptions(
                executable: script, arguments: ["--stream"] + arguments, environment: env,
                fileDescriptors: [0: stdin.readEnd, 1: out.writeEnd, 2: err.writeEnd], newProcessGroup: true
            ))
        } catch {
            for fd in [stdin.readEnd, stdin.writeEnd, out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] { close(fd) }
            throw ShellCallError.failed("cannot run \(script): \(error)")
        }
        close(stdin.readEnd)
        close(out.writeEnd)
        close(err.writeEnd)
        let queue = LineQueue()
        let errors = OutputBuffer()
        // The readers end with the script's pipes; the worker owns them.
        readers.run { try? await PipeReader.read(fd: out.readEnd) { queue.push($0) }; queue.finish() }
        readers.run { try? await PipeReader.read(fd: err.readEnd) { errors.append($0) } }
        // When it exits, what it left in its group goes too (and its pipes close).
        readers.run {
            _ = await started.waitForExit()
            ProcessGroups.ended(started)
        }
        input = stdin.writeEnd
        process = started
        lines = queue
        stderr = errors
        return (started, queue)
    }

    /// Kills the process group; the next call starts a new one. (A process that has
    /// already exited had its group killed then.)
    func stop() {
        process?.signalGroup(SIGKILL)
        process = nil
        lines = nil
        if input >= 0 {
            close(input)
            input = -1
        }
    }
}

/// Lines from a pipe, for one reader that waits with a deadline.
final class LineQueue: Sendable {
    enum Next: Sendable { case line(String), timedOut, ended }

    private struct State {
        var pending: [UInt8] = []
        var lines: [String] = []
        var ended = false
        var waiter: (id: Int, continuation: CheckedContinuation<Next, Never>)?
        var nextID = 0
    }

    private let state = NIOLockedValueBox(State())

    func push(_ bytes: [UInt8]) {
        let resume: (CheckedContinuation<Next, Never>, Next)? = state.withLockedValue { s in
            for b in bytes {
                if b == UInt8(ascii: "\n") {
                    s.lines.append(String(decoding: s.pending, as: UTF8.self))
                    s.pending.removeAll(keepingCapacity: true)
                } else {
                    s.pending.append(b)
                }
            }
            guard let w = s.waiter, !s.lines.isEmpty else { return nil }
            s.waiter = nil
            return (w.continuation, .line(s.lines.removeFirst()))
        }
        if let (c, next) = resume { c.resume(returning: next) }
    }

    func finish() {
        let waiter: CheckedContinuation<Next, Never>? = state.withLockedValue { s in
            s.ended = true
            defer { s.waiter = nil }
            return s.waiter?.continuation
        }
        waiter?.resume(returning: .ended)
    }

    func next(timeout: Duration) async -> Next {
        await withCheckedContinuation { (c: CheckedContinuation<Next, Never>) in
            let ready: Next? = state.withLockedValue { s in
                if !s.lines.isEmpty { return .line(s.lines.removeFirst()) }
                if s.ended { return .ended }
                s.nextID += 1
                s.waiter = (s.nextID, c)
                let id = s.nextID
                // The one deadline facility: a sweeper entry, not a sleeping task.
                DeadlineSweeper.shared.schedule(in: timeout) { [state] in
                    let expired: CheckedContinuation<Next, Never>? = state.withLockedValue { s in
                        guard let w = s.waiter, w.id == id else { return nil }
                        s.waiter = nil
                        return w.continuation
                    }
                    expired?.resume(returning: .timedOut)
                }
                return nil
            }
            if let ready { c.resume(returning: ready) }
        }
    }
}
