#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOConcurrencyHelpers
import Spawn

/// A command-line tool the image code runs (skopeo, umoci), found in `PATH`.
public struct ExternalTool: Sendable {
    /// The tool's name, as it is found in `PATH`.
    public let name: String
    /// Its path.
    public let executable: String

    /// Finds `name` in `PATH`; the error says which Debian package installs it.
    public static func find(_ name: String, package: String? = nil) throws -> ExternalTool {
        let env = ProcessInfo.processInfo.environment
        guard let path = try? ProcessSpawner.resolve(name, environment: env) else {
            throw ContainerError(.runtime, "\(name) is not installed (not found in PATH): install Debian's \(package ?? name) package (make deps does)")
        }
        return ExternalTool(name: name, executable: path)
    }

    /// What a run of the tool gave.
    public struct Result: Sendable {
        /// How it exited.
        public var status: ExitStatus
        /// Its standard output.
        public var stdout: String
        /// Its standard error, trimmed.
        public var stderr: String
        /// The last non-empty line of stderr (skopeo and umoci put their reason there), or the status.
        public var reason: String {
            let lines = stderr.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard let last = lines.last else { return "\(status)" }
            // skopeo logs `time="..." level=fatal msg="REASON"`: the reason alone.
            if let start = last.range(of: "msg=\"") {
                var text = String(last[start.upperBound...])
                if text.hasSuffix("\"") { text.removeLast() }
                return text.replacingOccurrences(of: "\\\"", with: "\"")
            }
            return last
        }
    }

    /// Runs the tool with `arguments` and collects its output. Cancelling the calling task
    /// kills the tool (SIGKILL) and waits for it.
    public func run(_ arguments: [String]) async throws -> Result {
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(SpawnOptions(
                executable: executable, arguments: arguments,
                environment: ProcessInfo.processInfo.environment,
                fileDescriptors: [1: out.writeEnd, 2: err.writeEnd]
            ))
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] { close(fd) }
            throw ContainerError(.runtime, "cannot start \(name): \(error)")
        }
        close(out.writeEnd)
        close(err.writeEnd)
        let stdout = NIOLockedValueBox<[UInt8]>([])
        let stderr = NIOLockedValueBox<[UInt8]>([])
        return await withTaskCancellationHandler {
            async let o: Void = PipeReader.read(fd: out.readEnd) { c in stdout.withLockedValue { $0 += c } }
            async let e: Void = PipeReader.read(fd: err.readEnd) { c in stderr.withLockedValue { $0 += c } }
            _ = try? await (o, e)
            let status = await process.waitForExit()
            return Result(
                status: status,
                stdout: String(decoding: stdout.withLockedValue { $0 }, as: UTF8.self),
                stderr: String(decoding: stderr.withLockedValue { $0 }, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            )
        } onCancel: {
            process.signal(SIGKILL)
        }
    }
}
