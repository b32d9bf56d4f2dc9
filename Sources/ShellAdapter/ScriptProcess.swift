#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOConcurrencyHelpers
import Spawn

/// What one run of a script produced.
struct ScriptRun: Sendable {
    var status: ExitStatus
    var stdout: String
    var stderr: String
}

/// Running a script: its own process group (so a timeout kills all it started), stdin fed
/// from a real thread, stdout and stderr collected up to a bound.
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
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(SpawnOptions(
                executable: script, arguments: arguments, environment: environment, fileDescriptors: fds, newProcessGroup: true
            ))
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] + [input?.readEnd, input?.writeEnd].compactMap({ $0 }) { close(fd) }
            throw ShellCallError.failed("cannot run \(script): \(error)")
        }
        close(out.writeEnd)
        close(err.writeEnd)
        if let input, let stdin {
            close(input.readEnd)
            writeAll(stdin, to: input.writeEnd, thenClose: true)
        }
        let stdout = OutputBuffer()
        let stderr = OutputBuffer()
        async let o: Void = PipeReader.read(fd: out.readEnd) { stdout.append($0) }
        async let e: Void = PipeReader.read(fd: err.readEnd) { stderr.append($0) }
        let status = await process.waitForExit(timeout: timeout)
        if status == nil {
            process.signalGroup(SIGKILL)
        }
        let final = await process.waitForExit()
        _ = try? await (o, e)
        if status == nil {
            throw ShellCallError.timedOut("\(what) ran longer than its timeout of \(timeout); its process group was killed")
        }
        if stdout.overflowed || stderr.overflowed {
            throw ShellCallError.tooMuchOutput("\(what) printed more than \(maxOutput >> 20) MiB")
        }
        return ScriptRun(status: final, stdout: stdout.text, stderr: stderr.text)
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
