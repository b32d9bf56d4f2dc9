#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// plugboardd as a real process.
struct Daemon {
    let process: SpawnedProcess
    let log: LogLines

    /// Starts plugboardd on `socket` with its state in `stateDirectory`, a 1 s shutdown grace and
    /// `extra`, and waits (with a deadline) until it says it is ready.
    static func startReady(socket: String, stateDirectory: String, _ extra: [String] = []) async throws -> Daemon {
        let daemon = try await start(["--admin-socket", socket, "--state-dir", stateDirectory, "--shutdown-grace", "1"] + extra)
        let ready = try await withDeadline(60, "plugboardd ready") { await daemon.log.waitFor("plugboardd ready") }
        if ready == nil {
            daemon.process.signal(SIGKILL)
            _ = await daemon.process.waitForExit()
        }
        try #require(ready != nil, "plugboardd did not get ready; its log: \(daemon.log.all.suffix(8))")
        return daemon
    }

    /// Starts plugboardd with its own admin socket and state directory under `directory`
    /// (a test never touches the machine's defaults), plus `arguments`.
    static func start(in directory: String, _ arguments: [String]) async throws -> Daemon {
        try await start(["--admin-socket", directory + "/admin.sock", "--state-dir", directory + "/state"] + arguments)
    }

    private static func start(_ arguments: [String]) async throws -> Daemon {
        let err = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboardd"), arguments: arguments,
            environment: childEnvironment(["PATH": "/usr/bin:/bin", "HOME": "/tmp"]), fileDescriptors: [2: err.writeEnd]
        ))
        close(err.writeEnd)
        let log = LogLines(fd: err.readEnd)
        return Daemon(process: process, log: log)
    }
}

/// A place for one test's daemon: its own admin socket and state directory under /tmp,
/// and the CLI pointed at that socket.
struct DaemonPlace {
    let dir: String
    var socket: String { dir + "/admin.sock" }

    init(_ what: String) {
        dir = "/tmp/plugboard-\(what)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }

    /// Starts plugboardd with `echo` and `extra`, its state beside the socket's directory
    /// (the daemon creates that one 0700 itself), and waits until it is ready.
    func startDaemon(_ extra: [String] = []) async throws -> Daemon {
        try await Daemon.startReady(socket: socket, stateDirectory: dir + "-state", ["--plugin", "echo"] + extra)
    }

    /// SIGTERM, wait for the exit, and remove both directories.
    func stop(_ daemon: Daemon) async {
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.removeItem(atPath: dir + "-state")
    }

    /// Runs the `plugboard` CLI against this daemon.
    func cli(_ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try await runCommand(try builtExecutable("plugboard"), arguments + ["--socket", socket])
    }
}

/// Runs `body`; if it throws (a failed #require, an error), the daemon is killed first so
/// that no plugboardd outlives a failed test.
func whileRunning<T>(_ daemon: Daemon, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        daemon.process.signal(SIGKILL)
        _ = await daemon.process.waitForExit()
        throw error
    }
}

/// Reads a process's stderr line by line on its own thread; tests wait for a line.
final class LogLines: @unchecked Sendable {
    private let lock = NIOLockCompat()
    private var lines: [String] = []
    private var waiters: [(match: (Int, String) -> Bool, continuation: CheckedContinuation<String?, Never>)] = []
    private var ended = false

    init(fd: CInt) {
        // A real thread: a blocking read must not occupy one of Swift's few cooperative threads.
        Thread.detachNewThread { [self] in
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { break }
                for b in buffer[0..<n] {
                    if b == 10 { add(String(decoding: pending, as: UTF8.self)); pending = [] } else { pending.append(b) }
                }
            }
            close(fd)
            finish()
        }
    }

    private func add(_ line: String) {
        let ready: [CheckedContinuation<String?, Never>] = lock.withLock {
            lines.append(line)
            let index = lines.count - 1
            let matching = waiters.filter { $0.match(index, line) }
            waiters.removeAll { $0.match(index, line) }
            return matching.map(\.continuation)
        }
        for c in ready { c.resume(returning: line) }
    }

    private func finish() {
        let all = lock.withLock { () -> [CheckedContinuation<String?, Never>] in
            ended = true
            defer { waiters = [] }
            return waiters.map(\.continuation)
        }
        for c in all { c.resume(returning: nil) }
    }

    /// The first line containing `text` (already seen or still to come); nil if the stream ends first.
    func waitFor(_ text: String) async -> String? {
        await first { _, line in line.contains(text) }
    }

    /// Line number `index` (from 0), once it has arrived; nil if the stream ends first.
    func line(_ index: Int) async -> String? {
        await first { i, _ in i == index }
    }

    private func first(_ match: @escaping (Int, String) -> Bool) async -> String? {
        await withCheckedContinuation { c in
            let now: String?? = lock.withLock {
                if let i = lines.indices.first(where: { match($0, lines[$0]) }) { return .some(lines[i]) }
                if ended { return .some(nil) }
                waiters.append((match, c))
                return .none
            }
            if let now { c.resume(returning: now) }
        }
    }

    var all: [String] { lock.withLock { lines } }
}

/// A tiny lock, to keep this file free of NIO.
final class NIOLockCompat: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

@Suite("plugboardd as a process", .serialized)
struct DaemonTests {
    let dir = "/tmp/plugboard-daemon-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    func arguments() throws -> [String] {
        let plugin = try builtExecutable("plugboard-test-plugin")
        return [
            "--plugin", "echo", "--plugin", "host-mount", "/data /var/data",
            "--plugin-exec", "first=\(plugin)", "--plugin-exec", "second=\(plugin)",
            "--shutdown-grace", "2",
        ]
    }

    @Test("SIGTERM stops plugins in reverse boot order and leaves no child process")
    func sigterm() async throws {
        let daemon = try await Daemon.start(in: dir, try arguments())
        let ready = try await withDeadline(60, "plugboardd ready") { await daemon.log.waitFor("plugboardd ready") }
        // The services (events, metrics, state) boot first and stop last; nothing requires anything here.
        #expect(ready?.contains(#"["events", "metrics", "state", "echo", "first", "host-mount", "second"]"#) == true, "\(ready ?? "no line")")
        let children = ProcessWatch.children(of: daemon.process.pid)
        #expect(children.count == 2, "two exec plugins: \(children)")
        daemon.process.signal(SIGTERM)
        let status = try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
        let stops = daemon.log.all.filter { $0.contains("stopping plugin") }.compactMap { line in
            ["second", "host-mount", "first", "echo", "state", "metrics", "events"].first { line.contains("plugin.name=\($0) ") }
        }
        #expect(stops == ["second", "host-mount", "first", "echo", "state", "metrics", "events"])
        for child in children { #expect(ProcessWatch.waitUntilGone(child, timeout: .seconds(10)), "child \(child) outlived plugboardd") }
    }

    @Test("SIGKILL of plugboardd leaves no child process")
    func sigkill() async throws {
        let daemon = try await Daemon.start(in: dir, try arguments())
        _ = try await withDeadline(60, "plugboardd ready") { await daemon.log.waitFor("plugboardd ready") }
        let children = ProcessWatch.children(of: daemon.process.pid)
        #expect(children.count == 2)
        daemon.process.signal(SIGKILL)
        _ = await daemon.process.waitForExit()
        for child in children { #expect(ProcessWatch.waitUntilGone(child, timeout: .seconds(10)), "child \(child) outlived plugboardd") }
    }

    @Test("an unknown built-in is a clear error listing the known ones")
    func unknownBuiltin() async throws {
        let daemon = try await Daemon.start(in: dir, ["--plugin", "nope"])
        let line = try await withDeadline(30) { await daemon.log.waitFor("unknown built-in") }
        #expect(line?.contains("echo, host-mount") == true)
        #expect(await daemon.process.waitForExit() != .exited(0))
    }

    @Test("a PluginKit plugin started by hand says it is a plugin and how to run one")
    func startedByHand() async throws {
        let err = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboard-plugin-echo"), environment: childEnvironment(["PATH": "/usr/bin:/bin"]), fileDescriptors: [2: err.writeEnd]
        ))
        close(err.writeEnd)
        let log = LogLines(fd: err.readEnd)
        let line = try await withDeadline(30) { await log.waitFor("is a Plugboard plugin") }
        #expect(line != nil)
        #expect(await log.waitFor("plugboardd --plugin-exec") != nil)
        #expect(await process.waitForExit() == .exited(2))
    }
}
