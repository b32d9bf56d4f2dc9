#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import ArgumentParser
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import PluginProcess
import Spawn

/// `plugboard-bench daemon-call`: the path users run — an admin client, a real plugboardd,
/// a real exec plugin — and the daemon's own start-up and memory.
struct DaemonCallBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon-call",
        abstract: "Admin client → plugboardd → exec plugin calls, the daemon's idle memory and its start-to-ready time.",
        discussion: """
            Scenarios:
              daemon.call.sequential   one admin session, one call of echo at a time
              daemon.call.inflight64   one admin session, 64 calls in flight
              daemon.call.sessions16   16 client processes, each one session calling one at a time
              daemon.call.from_plugin  an exec plugin (plugboard-bench plugin-caller) calling echo
                                       through the engine one call at a time (ctx.engine.call):
                                       plugin → plugboardd → plugin, timed inside the caller
              daemon.idle_rss          plugboardd's resident memory, idle, with its services
                                       (events, metrics, state) and the echo exec plugin
              daemon.ready             plugboardd's start to "plugboardd ready" with its
                                       services and three exec plugins (echo, local-volumes,
                                       host-mount)
            The job is `echo` served by plugboard-plugin-echo (an exec plugin). The limits are
            measured in this run: the raw pipe ping-pong and pipelined rate, and
            chan.sequential (a Chan request/reply to a child on fds 3/4), which the issue's
            aim for daemon.call.sequential is stated against. plugboardd, plugboard-exec-shim and
            plugboard-plugin-{echo,local-volumes,host-mount} must sit next to plugboard-bench.
            """
    )

    @Option(help: "Timed calls per call scenario (sessions16: in all).")
    var calls: Int = 20_000

    @Option(help: "Untimed calls first.")
    var warmup: Int = 2_000

    @Option(help: "Repetitions of daemon.ready.")
    var readyRuns: Int = 10

    @Option(help: "Run only these scenarios (comma-separated), e.g. daemon.call.sequential.")
    var only: String?

    @Flag(help: "Skip the raw pipe and Chan limits (for profiling the daemon alone).")
    var noLimit = false

    @Option(help: "Call a plugboardd that is already running at this admin socket (serving echo) instead of starting one: for profiling the daemon under callgrind or perf.")
    var socket: String?

    @Option(help: "Keep the daemon running this many seconds after the call scenarios (to attach a profiler to it); its pid is printed on stderr.")
    var holdSeconds: Int = 0

    func wants(_ scenario: String) -> Bool {
        only.map { $0.split(separator: ",").map(String.init).contains(scenario) } ?? true
    }

    func run() async throws {
        let dir = (try selfExecutable() as NSString).deletingLastPathComponent
        for tool in ["plugboardd", "plugboard-plugin-echo", "plugboard-plugin-local-volumes", "plugboard-plugin-host-mount", "plugboard-exec-shim"] {
            guard access(dir + "/" + tool, X_OK) == 0 else {
                throw ValidationError("\(dir)/\(tool) is missing: build it first (make bench does)")
            }
        }
        let body: Value = "ping"
        let wireBody = try Admin.Call(job: "echo", argument: body).wireBody()
        let frameSize = try Msgpack.encode(.array([2, .int(1001), .map([(key: .string("body"), value: wireBody), (key: .string("reply"), value: .ext(type: 0x50, data: [UInt8](repeating: 0, count: 8)))])])).count + 4
        let limit = RawPipeLimit(payloadSize: frameSize)
        let noResult = RawPipeLimit.Result(p50: 0, p99: 0, messagesPerSecond: 0)
        let rawSequential = noLimit ? noResult : try limit.sequential(roundTrips: calls)
        let rawPipelined = noLimit ? noResult : try limit.pipelined(roundTrips: calls * 2, inflight: 64)
        let chanP50 = noLimit ? 0 : try await chanSequentialP50(calls: calls, warmup: warmup)

        let wantsCalls = ["daemon.call.sequential", "daemon.call.inflight64", "daemon.call.sessions16", "daemon.idle_rss"].contains(where: wants)
        if let socket {
            let daemon = BenchDaemon(process: nil, socket: socket, place: nil)
            try await callScenarios(daemon: daemon, wireBody: wireBody, rawSequential: rawSequential, rawPipelined: rawPipelined, chanP50: chanP50)
        } else if wantsCalls {
            let daemon = try await BenchDaemon.start(dir: dir, execPlugins: ["echo"])
            do {
                if wants("daemon.idle_rss") {
                    // Idle: ready, its plugin active, one call done, then left alone for a second.
                    try await daemon.callOnce(wireBody)
                    try await Task.sleep(for: .seconds(1))
                    let pid = daemon.process?.pid ?? 0
                    let rss = residentKiB(pid)
                    let floor = try bareSwiftProcessRSS()
                    print(jsonLine([
                        ("scenario", .string("daemon.idle_rss")),
                        ("rss_mib", .double(Double(rss) / 1024)),
                        ("rss_anon_mib", .double(Double(statusField(pid, "RssAnon:")) / 1024)),
                        ("rss_file_mib", .double(Double(statusField(pid, "RssFile:")) / 1024)),
                        ("threads", .int(threadCount(pid))),
                        ("limit_rss_mib", .double(Double(floor) / 1024)),
                        ("rss_vs_limit", .double(floor > 0 ? Double(rss) / Double(floor) : 0)),
                        ("aim_mib", .double(20)),
                    ]))
                }
                try await callScenarios(daemon: daemon, wireBody: wireBody, rawSequential: rawSequential, rawPipelined: rawPipelined, chanP50: chanP50)
                if holdSeconds > 0 {
                    FileHandle.standardError.write(Data("plugboardd pid \(daemon.process?.pid ?? 0), socket \(daemon.socket)\n".utf8))
                    try await Task.sleep(for: .seconds(holdSeconds))
                }
            } catch {
                await daemon.stop()
                throw error
            }
            await daemon.stop()
        }

        if wants("daemon.call.from_plugin"), socket == nil {
            // A daemon of its own, so that the caller plugin changes nothing the others measure.
            let daemon = try await BenchDaemon.start(dir: dir, execPlugins: ["echo"], caller: true)
            do {
                try await fromPlugin(daemon: daemon, rawSequential: rawSequential, chanP50: chanP50)
            } catch {
                await daemon.stop()
                throw error
            }
            await daemon.stop()
        }

        if wants("daemon.ready") {
            var samples = Samples()
            for _ in 0..<readyRuns {
                let t0 = now()
                let daemon = try await BenchDaemon.start(dir: dir, execPlugins: ["echo"], extraPlugins: true)
                samples.add(now() - t0)
                await daemon.stop()
            }
            // The limit: the daemon binary's own start-up and exit (`plugboardd --help`).
            var bare = Samples()
            let devNull = open("/dev/null", O_WRONLY | O_CLOEXEC)
            defer { close(devNull) }
            for _ in 0..<readyRuns {
                let t0 = now()
                let p = try ProcessSpawner.spawn(SpawnOptions(executable: dir + "/plugboardd", arguments: ["--help"], environment: ["PATH": "/usr/bin:/bin"], fileDescriptors: [1: devNull]))
                _ = await p.waitForExit()
                bare.add(now() - t0)
            }
            print(jsonLine([
                ("scenario", .string("daemon.ready")),
                ("runs", .int(samples.nanos.count)),
                ("p50_ms", .double(samples.percentile(0.5) / 1000)),
                ("p99_ms", .double(samples.percentile(0.99) / 1000)),
                ("limit_p50_ms", .double(bare.percentile(0.5) / 1000)),
                ("p50_vs_limit", .double(bare.percentile(0.5) > 0 ? samples.percentile(0.5) / bare.percentile(0.5) : 0)),
                ("exec_plugins", .int(3)),
            ]))
        }
    }

    func callScenarios(daemon: BenchDaemon, wireBody: Value, rawSequential: RawPipeLimit.Result, rawPipelined: RawPipeLimit.Result, chanP50: Double) async throws {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        if wants("daemon.call.sequential") || wants("daemon.call.inflight64") {
            let (session, channel) = try await adminSession(daemon.socket, logger: logger)
            defer { session.close(reason: "benchmark done") }
            try await withTaskExecutorPreference(session.taskExecutor) {
                for _ in 0..<warmup { _ = try await channel.request(wireBody) }
                if wants("daemon.call.sequential") {
                    let (samples, start, end) = try await timeSequentially(calls) { _ = try await channel.request(wireBody) }
                    printSequential(
                        "daemon.call.sequential", p50: samples.percentile(0.5), p99: samples.percentile(0.99),
                        rate: Double(calls) / (Double(end - start) / 1e9), rawSequential: rawSequential, chanP50: chanP50
                    )
                }
                if wants("daemon.call.inflight64") {
                    let inflight = 64
                    let perWorker = max(1, calls * 2 / inflight)
                    let (merged, elapsed) = try await timeConcurrently(workers: inflight, perWorker: perWorker) { _ = try await channel.request(wireBody) }
                    let total = perWorker * inflight
                    let rate = Double(total) / elapsed
                    print(jsonLine([
                        ("scenario", .string("daemon.call.inflight64")),
                        ("calls", .int(total)),
                        ("p50_us", .double(merged.percentile(0.5))),
                        ("p99_us", .double(merged.percentile(0.99))),
                        ("calls_per_s", .double(rate)),
                        ("limit_p50_us", .double(rawSequential.p50)),
                        ("limit_msgs_per_s", .double(rawPipelined.messagesPerSecond)),
                        ("rate_vs_limit", .double(rawPipelined.messagesPerSecond > 0 ? rate / rawPipelined.messagesPerSecond : 0)),
                    ]))
                }
            }
        }
        if wants("daemon.call.sessions16") {
            try await sessions16(daemon: daemon, rawSequential: rawSequential, rawPipelined: rawPipelined)
        }
    }

    /// The caller plugin, granted echo, calls it `calls` times through the engine and says
    /// how long each took; the admin call that starts the loop is not timed.
    func fromPlugin(daemon: BenchDaemon, rawSequential: RawPipeLimit.Result, chanP50: Double) async throws {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let (session, channel) = try await adminSession(daemon.socket, logger: logger)
        defer { session.close(reason: "benchmark done") }
        _ = try await channel.request(try Admin.PluginGrant(name: "caller", jobs: ["echo"]).wireBody())
        let loop = try Admin.Call(job: CallLoopPlugin.job, argument: .fields(("job", "echo"), ("calls", .int(Int64(calls))), ("warmup", .int(Int64(warmup)))), timeoutMilliseconds: 3_600_000).wireBody()
        let result = try await channel.request(loop, timeout: .seconds(3700))
        guard case .float(let p50)? = result["p50_us"], case .float(let p99)? = result["p99_us"], case .float(let rate)? = result["calls_per_s"] else {
            throw ValidationError("the caller plugin answered \(result)")
        }
        printSequential("daemon.call.from_plugin", p50: p50, p99: p99, rate: rate, rawSequential: rawSequential, chanP50: chanP50)
    }

    /// One line of a one-call-at-a-time scenario, beside the raw pipe and `chan.sequential`.
    func printSequential(_ scenario: String, p50: Double, p99: Double, rate: Double, rawSequential: RawPipeLimit.Result, chanP50: Double) {
        print(jsonLine([
            ("scenario", .string(scenario)),
            ("calls", .int(calls)),
            ("p50_us", .double(p50)),
            ("p99_us", .double(p99)),
            ("calls_per_s", .double(rate)),
            ("limit_p50_us", .double(rawSequential.p50)),
            ("limit_msgs_per_s", .double(rawSequential.messagesPerSecond)),
            ("p50_vs_limit", .double(rawSequential.p50 > 0 ? p50 / rawSequential.p50 : 0)),
            ("chan_sequential_p50_us", .double(chanP50)),
            ("p50_vs_chan_sequential", .double(chanP50 > 0 ? p50 / chanP50 : 0)),
        ]))
    }

    /// 16 client processes, each with its own admin session calling one at a time; all
    /// start together once every one has connected and warmed up.
    func sessions16(daemon: BenchDaemon, rawSequential: RawPipeLimit.Result, rawPipelined: RawPipeLimit.Result) async throws {
        let clients = 16
        let perClient = max(1, calls / clients)
        var children: [(process: SpawnedProcess, go: CInt, out: CInt)] = []
        defer {
            for child in children {
                close(child.go)
                close(child.out)
            }
        }
        for _ in 0..<clients {
            let go = try PipeDescriptors.make()
            let out = try PipeDescriptors.make()
            let process = try ProcessSpawner.spawn(SpawnOptions(
                executable: try selfExecutable(),
                arguments: ["daemon-call-client", "--socket", daemon.socket, "--calls", String(perClient), "--warmup", String(max(1, warmup / clients))],
                environment: ["PATH": "/usr/bin:/bin"],
                fileDescriptors: [3: go.readEnd, 4: out.writeEnd, 2: 2]
            ))
            close(go.readEnd)
            close(out.writeEnd)
            children.append((process, go.writeEnd, out.readEnd))
        }
        // Each says "ready" once connected and warm; then all are told to go at once.
        for child in children {
            guard readLine(child.out) == "ready" else { throw ValidationError("a daemon-call-client did not get ready") }
        }
        var goByte: [UInt8] = [1]
        for child in children { try writeAll(child.go, &goByte) }
        var starts: [UInt64] = [], ends: [UInt64] = [], samples = Samples()
        for child in children {
            // "START END P50_NS P99_NS"
            let fields = (readLine(child.out) ?? "").split(separator: " ").compactMap { UInt64($0) }
            guard fields.count == 4 else { throw ValidationError("a daemon-call-client failed") }
            starts.append(fields[0])
            ends.append(fields[1])
            samples.add(fields[2])
            _ = await child.process.waitForExit()
        }
        let elapsed = Double((ends.max() ?? 0) - (starts.min() ?? 0)) / 1e9
        let total = perClient * clients
        let rate = elapsed > 0 ? Double(total) / elapsed : 0
        print(jsonLine([
            ("scenario", .string("daemon.call.sessions16")),
            ("calls", .int(total)),
            ("p50_us", .double(samples.percentile(0.5))),
            ("calls_per_s", .double(rate)),
            ("limit_p50_us", .double(rawSequential.p50)),
            ("limit_msgs_per_s", .double(rawPipelined.messagesPerSecond)),
            ("rate_vs_limit", .double(rawPipelined.messagesPerSecond > 0 ? rate / rawPipelined.messagesPerSecond : 0)),
            ("clients", .int(clients)),
        ]))
    }

    /// chan.sequential measured here, the reference of the daemon call's aim.
    func chanSequentialP50(calls: Int, warmup: Int) async throws -> Double {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let launched = try await PluginProcess.launch(
            executable: try selfExecutable(), arguments: ["chan-peer"], environment: ["PATH": "/usr/bin:/bin"],
            extraDescriptors: [2: 2], configuration: .init(name: "bench"), logger: logger
        )
        try await launched.session.start()
        let body: Value = "ping"
        let p50 = try await withTaskExecutorPreference(launched.session.taskExecutor) {
            let channel = try launched.session.open(label: "calls")
            for _ in 0..<warmup { _ = try await channel.request(body) }
            return try await timeSequentially(calls) { _ = try await channel.request(body) }.samples.percentile(0.5)
        }
        launched.session.close(reason: "benchmark done")
        _ = await launched.process.waitForExit()
        return p50
    }

    /// The resident memory of a Swift process that does nothing (the bench's pipe peer,
    /// blocked in read): the floor any Swift daemon starts from.
    func bareSwiftProcessRSS() throws -> Int {
        let pipe = try PipeDescriptors.make()
        let out = try PipeDescriptors.make()
        let child = try ProcessSpawner.spawn(SpawnOptions(
            executable: try selfExecutable(), arguments: ["pipe-peer", "--payload", "1"],
            environment: ["PATH": "/usr/bin:/bin"], fileDescriptors: [3: pipe.readEnd, 4: out.writeEnd, 2: 2]
        ))
        close(pipe.readEnd)
        close(out.writeEnd)
        var byte: [UInt8] = [0]
        try writeAll(pipe.writeEnd, &byte)
        try readExactly(out.readEnd, &byte)  // it has run and answered: fully loaded
        let rss = residentKiB(child.pid)
        close(pipe.writeEnd)
        close(out.readEnd)
        child.signal(SIGTERM)
        return rss
    }
}

/// Opens an admin session to `socket` and its admin channel.
func adminSession(_ socket: String, logger: Logger) async throws -> (Session, Sender) {
    let session = try await Session.connect(unixSocketPath: socket, configuration: .init(name: "bench"), logger: logger)
    try await session.start()
    return (session, try session.open(label: AdminSocket.channelLabel))
}

/// A plugboardd of the bench's own: a temporary admin socket and state directory, its
/// services, and exec plugins named as given (each plugboard-plugin-echo).
struct BenchDaemon {
    /// nil for a daemon the bench did not start (`--socket`).
    let process: SpawnedProcess?
    let socket: String
    let place: String?

    /// `extraPlugins` adds two more exec plugins beside echo: local-volumes (a volume
    /// directory under the bench's place) and host-mount (`/tmp /host/tmp ro`).
    /// `caller` adds `caller`, this bench's plugin-caller (daemon.call.from_plugin).
    static func start(dir: String, execPlugins: [String], extraPlugins: Bool = false, caller: Bool = false) async throws -> BenchDaemon {
        let place = "/tmp/plugboard-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let socket = place + "/admin.sock"
        var arguments = ["--admin-socket", socket, "--state-dir", place + "-state", "--shutdown-grace", "1"]
        for name in execPlugins { arguments += ["--plugin-exec", "\(name)=\(dir)/plugboard-plugin-echo"] }
        if caller { arguments += ["--plugin-exec", "caller=\(try selfExecutable()) plugin-caller"] }
        if extraPlugins {
            arguments += ["--plugin-exec", "volumes=\(dir)/plugboard-plugin-local-volumes \(place)/volumes"]
            arguments += ["--plugin-exec", "mount=\(dir)/plugboard-plugin-host-mount /tmp /host/tmp ro"]
        }
        let err = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: dir + "/plugboardd", arguments: arguments,
            environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp"], fileDescriptors: [2: err.writeEnd]
        ))
        close(err.writeEnd)
        // Its log until "plugboardd ready", then drained on a thread of its own to the end.
        let ready = LogWatch(fd: err.readEnd)
        guard await ready.waitForReady() else {
            process.signal(SIGKILL)
            _ = await process.waitForExit()
            throw ValidationError("plugboardd did not get ready: \(ready.tail)")
        }
        return BenchDaemon(process: process, socket: socket, place: place)
    }

    func callOnce(_ wireBody: Value) async throws {
        let (session, channel) = try await adminSession(socket, logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() }))
        defer { session.close(reason: "done") }
        _ = try await channel.request(wireBody)
    }

    func stop() async {
        guard let process, let place else { return }
        process.signal(SIGTERM)
        _ = await process.waitForExit()
        try? FileManager.default.removeItem(atPath: place)
        try? FileManager.default.removeItem(atPath: place + "-state")
    }
}

/// Reads a daemon's stderr on a thread until it says it is ready, then drains it.
/// `@unchecked Sendable`: its state is guarded by `lock`.
final class LogWatch: @unchecked Sendable {
    private let lock = NIOLock()
    private var isReady: Bool?
    private var waiter: CheckedContinuation<Bool, Never>?
    private var lines: [String] = []

    init(fd: CInt) {
        let thread = Thread { [self] in
            var pending: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                for b in buffer[0..<n] {
                    guard b == 10 else { pending.append(b); continue }
                    let line = String(decoding: pending, as: UTF8.self)
                    pending = []
                    self.line(line)
                }
            }
            close(fd)
            self.settle(false)
        }
        thread.start()
    }

    private func line(_ line: String) {
        lock.withLock {
            if lines.count < 20 { lines.append(line) } else { lines = Array(lines.suffix(19)) + [line] }
        }
        if line.contains("plugboardd ready") { settle(true) }
    }

    private func settle(_ value: Bool) {
        let w: CheckedContinuation<Bool, Never>? = lock.withLock {
            guard isReady == nil else { return nil }
            isReady = value
            defer { waiter = nil }
            return waiter
        }
        w?.resume(returning: value)
    }

    var tail: [String] { lock.withLock { lines } }

    func waitForReady() async -> Bool {
        await withCheckedContinuation { continuation in
            let now: Bool? = lock.withLock {
                if let isReady { return isReady }
                waiter = continuation
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}

/// The `VmRSS` of a process, in KiB (0 when it cannot be read).
func residentKiB(_ pid: pid_t) -> Int {
    statusField(pid, "VmRSS:")
}

/// The number of threads of a process.
func threadCount(_ pid: pid_t) -> Int {
    statusField(pid, "Threads:")
}

func statusField(_ pid: pid_t, _ name: String) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(name) {
        return Int(line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") ?? 0
    }
    return 0
}

/// One line from `fd` (blocking), without its newline; nil at the end.
func readLine(_ fd: CInt) -> String? {
    var bytes: [UInt8] = []
    var byte: UInt8 = 0
    while true {
        let n = read(fd, &byte, 1)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
        if byte == 10 { return String(decoding: bytes, as: UTF8.self) }
        bytes.append(byte)
    }
}

/// The child side of daemon.call.sessions16: one admin session, calls one at a time.
/// Says "ready" on fd 4 when warm, waits for a byte on fd 3, then answers
/// "START END P50 P99" (monotonic nanoseconds) on fd 4.
struct DaemonCallClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "daemon-call-client", abstract: "Internal: one admin client of daemon.call.sessions16.", shouldDisplay: false)

    @Option var socket: String
    @Option var calls: Int
    @Option var warmup: Int

    func run() async throws {
        let (session, channel) = try await adminSession(socket, logger: Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() }))
        let wireBody = try Admin.Call(job: "echo", argument: "ping").wireBody()
        let line = try await withTaskExecutorPreference(session.taskExecutor) {
            for _ in 0..<warmup { _ = try await channel.request(wireBody) }
            var ready = Array("ready\n".utf8)
            try writeAll(4, &ready)
            var go: [UInt8] = [0]
            try readExactly(3, &go)
            let (samples, start, end) = try await timeSequentially(calls) { _ = try await channel.request(wireBody) }
            return "\(start) \(end) \(UInt64(samples.percentile(0.5) * 1000)) \(UInt64(samples.percentile(0.99) * 1000))\n"
        }
        var bytes = Array(line.utf8)
        try writeAll(4, &bytes)
        session.close(reason: "done")
    }
}
