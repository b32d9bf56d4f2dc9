#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Logging
import PluginProcess
import NIOConcurrencyHelpers
import Routing
import Spawn

/// A logger that prints nothing; tests assert on behaviour, not log lines.
public let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// The deadline passed before the operation finished.
public struct DeadlineExceeded: Error, CustomStringConvertible {
    public let what: String
    public init(what: String) { self.what = what }
    public var description: String { "deadline exceeded waiting for \(what)" }
}

/// Runs `body`, failing if it has not finished within `seconds`. The deadline guards
/// against hangs; it never decides what the right answer is. It returns at the deadline
/// even if `body` ignores cancellation.
@discardableResult
public func withDeadline<T: Sendable>(_ seconds: Double = 30, _ what: String = "the operation", _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let resumed = NIOLockedValueBox(false)
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let work = Task {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            if resumed.withLockedValue({ let was = $0; $0 = true; return !was }) {
                continuation.resume(with: result)
            }
        }
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            if resumed.withLockedValue({ let was = $0; $0 = true; return !was }) {
                work.cancel()
                continuation.resume(throwing: DeadlineExceeded(what: what))
            }
        }
    }
}

/// Where the package's executables were built: next to the test bundle.
public func builtExecutable(_ name: String) throws -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { throw SystemError("readlink", errno: errno, "/proc/self/exe") }
    let selfPath = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var dir = (selfPath as NSString).deletingLastPathComponent
    if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
    let path = dir + "/" + name
    guard access(path, X_OK) == 0 else {
        throw SystemError("access", errno: ENOENT, "\(path): build it first (make test runs `swift build --build-tests`)")
    }
    return path
}

/// A real child process running plugboard-test-peer with its session on fds 3/4.
public struct PeerProcess: Sendable {
    public let session: Session
    public let process: SpawnedProcess

    /// Starts the peer with `arguments` (its mode and options).
    public static func start(_ arguments: [String] = ["serve"], configuration: Session.Configuration = .init(name: "test-engine")) async throws -> PeerProcess {
        let launched = try await PluginProcess.launch(
            executable: try builtExecutable("plugboard-test-peer"), arguments: arguments,
            environment: childEnvironment(["PATH": "/usr/bin:/bin"]), extraDescriptors: [2: 2],
            configuration: configuration, logger: quietLogger
        )
        try await launched.session.start()
        return PeerProcess(session: launched.session, process: launched.process)
    }

    /// A subprocess routing participant named `name`, reached over a "calls" channel.
    public static func participant(_ name: String) async throws -> (Participant, PeerProcess) {
        let peer = try await start(["participant", name])
        let calls = try peer.session.open(label: "calls")
        return (Participant.remote(name, calls: calls), peer)
    }

    /// Closes the session and waits for the child to exit.
    public func stop() async {
        session.close(reason: "test finished")
        _ = await process.waitForExit()
    }
}

/// A one-shot signal a test can wait on (with a deadline) instead of sleeping.
public final class Signal: Sendable {
    private let state = NIOLockedValueBox<(fired: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    public init() {}

    public func fire() {
        let waiters = state.withLockedValue { s -> [CheckedContinuation<Void, Never>] in
            s.fired = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }

    public func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLockedValue { s -> Bool in
                if s.fired { return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    public var fired: Bool { state.withLockedValue { $0.fired } }
}

/// A logger whose lines tests can wait for, instead of printing them.
public final class CapturedLog: Sendable {
    public struct Line: Sendable {
        public let message: String
        public let metadata: [String: String]
    }

    private let state = NIOLockedValueBox<(lines: [Line], waiters: [(String, CheckedContinuation<Line, Never>)])>(([], []))

    public init() {}

    public var logger: Logger {
        Logger(label: "captured") { _ in CapturingHandler(log: self) }
    }

    func add(_ line: Line) {
        let ready = state.withLockedValue { s -> [CheckedContinuation<Line, Never>] in
            s.lines.append(line)
            let matching = s.waiters.filter { line.message.contains($0.0) }.map(\.1)
            s.waiters.removeAll { line.message.contains($0.0) }
            return matching
        }
        for c in ready { c.resume(returning: line) }
    }

    /// The first line whose message contains `text`, seen or still to come.
    public func waitFor(_ text: String) async -> Line {
        await withCheckedContinuation { c in
            let now: Line? = state.withLockedValue { s in
                if let l = s.lines.first(where: { $0.message.contains(text) }) { return l }
                s.waiters.append((text, c))
                return nil
            }
            if let now { c.resume(returning: now) }
        }
    }
}

struct CapturingHandler: LogHandler {
    let log: CapturedLog
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        log.add(.init(message: "\(event.message)", metadata: merged.mapValues { "\($0)" }))
    }
}

/// `base` plus the sanitizer settings of this test process (make sanitize), so that the
/// daemons and tools a test starts run under the same options.
public func childEnvironment(_ base: [String: String]) -> [String: String] {
    var env = base
    for key in ["ASAN_OPTIONS", "TSAN_OPTIONS", "PLUGBOARD_SANITIZER"] {
        if let v = ProcessInfo.processInfo.environment[key] { env[key] = v }
    }
    return env
}

/// Runs `plugboard` (or any command) to completion and returns its status and output.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin"]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
    let out = try PipeDescriptors.make()
    let err = try PipeDescriptors.make()
    let process = try ProcessSpawner.spawn(SpawnOptions(executable: executable, arguments: arguments, environment: childEnvironment(environment), fileDescriptors: [1: out.writeEnd, 2: err.writeEnd]))
    close(out.writeEnd)
    close(err.writeEnd)
    async let stdout = readToEnd(out.readEnd)
    async let stderr = readToEnd(err.readEnd)
    let (o, e) = await (stdout, stderr)
    return (await process.waitForExit(), o, e)
}

/// Reads a pipe to its end on a real thread (a blocking read must not hold a cooperative thread).
public func readToEnd(_ fd: CInt) async -> String {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread {
            var all: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { break }
                all.append(contentsOf: buffer[0..<n])
            }
            close(fd)
            continuation.resume(returning: String(decoding: all, as: UTF8.self))
        }
    }
}
