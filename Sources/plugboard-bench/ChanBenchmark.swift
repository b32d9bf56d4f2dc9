#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Logging
import PluginProcess
import NIOConcurrencyHelpers
import Spawn

/// `plugboard-bench chan`: request/reply round trips to a child over fds 3/4.
struct ChanBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chan",
        abstract: "Request/reply over a Chan session to a child process on fds 3/4, next to a raw pipe ping-pong.",
        discussion: """
            Scenarios:
              chan.sequential  one call at a time
              chan.inflight64  64 calls in flight on one channel
            """
    )

    @Option(help: "Timed calls per scenario.")
    var calls: Int = 50_000

    @Option(help: "Untimed calls first, to warm up both processes.")
    var warmup: Int = 5_000

    @Option(help: "Run only these scenarios (comma-separated), e.g. chan.inflight64.")
    var only: String?

    @Flag(help: "Skip the raw pipe limit (for profiling Plugboard alone).")
    var noLimit = false

    func wants(_ scenario: String) -> Bool {
        only.map { $0.split(separator: ",").map(String.init).contains(scenario) } ?? true
    }

    @Flag(inversion: .prefixedNo, help: "Run the calling tasks on the session's event loop (the default) or, with --no-on-loop, on Swift's global pool.")
    var onLoop = true

    func run() async throws {
        let logger = Logger(label: "plugboard-bench")
        let peer = try await startPeer(logger: logger)
        if onLoop {
            try await withTaskExecutorPreference(peer.session.taskExecutor) {
                try await measure(peer)
            }
        } else {
            try await measure(peer)
        }
        peer.session.close(reason: "benchmark done")
        _ = await peer.process.waitForExit()
    }

    func measure(_ peer: Peer) async throws {
        let channel = try peer.session.open(label: "calls")
        let body: Value = "ping"

        for _ in 0..<warmup { _ = try await channel.request(body) }

        // The raw limit uses messages as large as our request frame.
        let requestFrameSize = try requestFrameBytes(body)
        let limit = RawPipeLimit(payloadSize: requestFrameSize)

        let noResult = RawPipeLimit.Result(p50: 0, p99: 0, messagesPerSecond: 0)
        let rawSequential = noLimit ? noResult : try limit.sequential(roundTrips: calls)

        // chan.sequential
        if wants("chan.sequential") {
        let (samples, start, end) = try await timeSequentially(calls) { _ = try await channel.request(body) }
        let elapsed = Double(end - start) / 1e9
        print(jsonLine([
            ("scenario", .string("chan.sequential")),
            ("calls", .int(calls)),
            ("p50_us", .double(samples.percentile(0.5))),
            ("p99_us", .double(samples.percentile(0.99))),
            ("calls_per_s", .double(Double(calls) / elapsed)),
            ("limit_p50_us", .double(rawSequential.p50)),
            ("limit_p99_us", .double(rawSequential.p99)),
            ("limit_msgs_per_s", .double(rawSequential.messagesPerSecond)),
            ("p50_vs_limit", .double(samples.percentile(0.5) / rawSequential.p50)),
            ("payload_bytes", .int(requestFrameSize)),
            ("executor", .string(onLoop ? "event-loop" : "global")),
        ]))
        }

        // chan.inflight64
        guard wants("chan.inflight64") else { return }
        let inflight = 64
        let perWorker = max(1, calls * 2 / inflight)
        let (merged, elapsedInflight) = try await timeConcurrently(workers: inflight, perWorker: perWorker) { _ = try await channel.request(body) }
        let total = perWorker * inflight
        let rawPipelined = noLimit ? noResult : try limit.pipelined(roundTrips: total, inflight: inflight)
        print(jsonLine([
            ("scenario", .string("chan.inflight64")),
            ("calls", .int(total)),
            ("p50_us", .double(merged.percentile(0.5))),
            ("p99_us", .double(merged.percentile(0.99))),
            ("calls_per_s", .double(Double(total) / elapsedInflight)),
            ("limit_p50_us", .double(rawSequential.p50)),
            ("limit_msgs_per_s", .double(rawPipelined.messagesPerSecond)),
            ("payload_bytes", .int(requestFrameSize)),
            ("executor", .string(onLoop ? "event-loop" : "global")),
        ]))
    }

    func requestFrameBytes(_ body: Value) throws -> Int {
        // {"body": body, "reply": <ext 0x50, 8-byte id>} inside [2, id, value]: framing + 4.
        let map: Value = .map([(key: .string("body"), value: body), (key: .string("reply"), value: .ext(type: 0x50, data: [UInt8](repeating: 0, count: 8)))])
        return try Msgpack.encode(.array([2, .int(1001), map])).count + 4
    }

    struct Peer {
        let session: Session
        let process: SpawnedProcess
    }

    func startPeer(logger: Logger) async throws -> Peer {
        let launched = try await PluginProcess.launch(
            executable: try selfExecutable(), arguments: ["chan-peer"], environment: ["PATH": "/usr/bin:/bin"],
            extraDescriptors: [2: 2], configuration: .init(name: "bench"), logger: logger
        )
        try await launched.session.start()
        return Peer(session: launched.session, process: launched.process)
    }
}

/// The child side: answers every request on every channel with its body.
struct ChanPeer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chan-peer", abstract: "Internal: the Chan echo child.", shouldDisplay: false)

    func run() async throws {
        let session = try await Session.overFileDescriptors(
            read: 3, write: 4, role: .acceptor, configuration: .init(name: "bench-peer"), logger: Logger(label: "bench-peer")
        )
        try await session.start()
        await withTaskExecutorPreference(session.taskExecutor) {
            await serve(session)
        }
    }

    func serve(_ session: Session) async {
        await withDiscardingTaskGroup { group in
            while let channel = try? await session.accept() {
                group.addTask {
                    while let request = try? await channel.nextRequest() {
                        try? await request.respond(request.body)
                    }
                }
            }
        }
    }
}
