#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Hooks
import Hub
import Logging
import Pipeline
import PluginProcess
import Routing
import Spawn

/// `plugboard-bench routing`: job calls and hook chains, in process and to subprocesses.
struct RoutingBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "routing",
        abstract: "Hub calls and hook chains, in process and to subprocess plugins over fds 3/4.",
        discussion: """
            Scenarios:
              hub.inprocess             one job call to an in-process plugin
              hub.subprocess            one job call to a subprocess plugin
              hooks.chain3.inprocess    a mutating chain of three in-process plugins
              hooks.chain3.subprocess   a mutating chain of three subprocess plugins
              pipeline.inprocess        a message through two in-process pipeline plugins
              pipeline.subprocess       a message through two subprocess pipeline plugins
            The limit columns: for in-process scenarios, a plain async closure call; for
            subprocess ones, the raw pipe ping-pong of the same machine, measured in this run.
            """
    )

    @Option(help: "Timed calls per scenario.")
    var calls: Int = 20_000

    @Option(help: "Untimed calls first.")
    var warmup: Int = 2_000

    @Flag(help: "Only the in-process scenarios (for profiling).")
    var inProcessOnly = false

    func run() async throws {
        let logger = Logger(label: "plugboard-bench")
        let payload: Value = .fields(("image", "busybox"), ("env", .array([])))

        // In process.
        let hub = Hub(logger: logger)
        try hub.register(jobs: ["echo"], for: .inProcess("echo") { $0.payload })
        let closure: @Sendable (Value) async -> Value = { $0 }
        let direct = try await measure(calls) { _ = await closure(payload) }
        let hubIn = try await measure(calls, warmup: warmup) { _ = try await hub.call("echo", payload) }
        report("hub.inprocess", hubIn, limit: direct)

        let hooks = Hooks(logger: logger)
        for (i, name) in ["a", "b", "c"].enumerated() {
            hooks.register("container.create", priority: 10 - i, by: .inProcess(name) { invocation in
                .fields(("payload", appendEnv(invocation.payload, name)))
            })
        }
        let chainIn = try await measure(calls, warmup: warmup) { _ = try await hooks.run("container.create", payload: payload, object: "c") }
        report("hooks.chain3.inprocess", chainIn, limit: direct)

        let pipeline = Pipeline(logger: logger)
        for (i, name) in ["p", "q"].enumerated() {
            pipeline.register(type: "log", priority: 10 - i, by: .inProcess(name) { invocation in
                .array([.fields(("type", .string(invocation.name)), ("body", invocation.payload))])
            })
        }
        let message = PipelineMessage(type: "log", body: payload)
        let pipeIn = try await measure(calls, warmup: warmup) { _ = try await pipeline.route(message) }
        report("pipeline.inprocess", pipeIn, limit: direct)

        if inProcessOnly { return }

        // Subprocesses.
        let raw = try RawPipeLimit(payloadSize: 64).sequential(roundTrips: calls)
        let rawResult = Measurement(p50: raw.p50, p99: raw.p99, perSecond: raw.messagesPerSecond)
        var peers: [SpawnedPeer] = []
        for name in ["sub-a", "sub-b", "sub-c"] { peers.append(try await SpawnedPeer.start(name: name, logger: logger)) }
        let remoteHub = Hub(logger: logger)
        try remoteHub.register(jobs: ["echo"], for: peers[0].participant)
        let hubSub = try await measure(calls, warmup: warmup) { _ = try await remoteHub.call("echo", payload) }
        report("hub.subprocess", hubSub, limit: rawResult)

        let remoteHooks = Hooks(logger: logger)
        for (i, peer) in peers.enumerated() {
            remoteHooks.register("container.create", priority: 10 - i, by: peer.participant)
        }
        let chainSub = try await measure(calls, warmup: warmup) { _ = try await remoteHooks.run("container.create", payload: payload, object: "c") }
        report("hooks.chain3.subprocess", chainSub, limit: rawResult, extra: [("vs_hub_subprocess", .double(chainSub.p50 / hubSub.p50))])

        let remotePipeline = Pipeline(logger: logger)
        for (i, peer) in peers.prefix(2).enumerated() {
            remotePipeline.register(type: "log", priority: 10 - i, by: peer.participant)
        }
        let pipeSub = try await measure(calls, warmup: warmup) { _ = try await remotePipeline.route(message) }
        report("pipeline.subprocess", pipeSub, limit: rawResult, extra: [("vs_hub_subprocess", .double(pipeSub.p50 / hubSub.p50))])

        for peer in peers { await peer.stop() }
    }

    struct Measurement {
        var p50: Double
        var p99: Double
        var perSecond: Double
    }

    func measure(_ count: Int, warmup: Int = 0, _ body: () async throws -> Void) async throws -> Measurement {
        for _ in 0..<warmup { try await body() }
        var samples = Samples()
        samples.nanos.reserveCapacity(count)
        let start = now()
        for _ in 0..<count {
            let t0 = now()
            try await body()
            samples.add(now() - t0)
        }
        let elapsed = Double(now() - start) / 1e9
        return Measurement(p50: samples.percentile(0.5), p99: samples.percentile(0.99), perSecond: Double(count) / elapsed)
    }

    func report(_ scenario: String, _ m: Measurement, limit: Measurement, extra: [(String, JSONField)] = []) {
        print(jsonLine([
            ("scenario", .string(scenario)),
            ("calls", .int(calls)),
            ("p50_us", .double(m.p50)),
            ("p99_us", .double(m.p99)),
            ("calls_per_s", .double(m.perSecond)),
            ("limit_p50_us", .double(limit.p50)),
            ("limit_msgs_per_s", .double(limit.perSecond)),
        ] + extra))
    }
}

/// Adds `NAME=1` to a payload's "env" list, as the benchmark's hooks do.
func appendEnv(_ payload: Value, _ name: String) -> Value {
    var entries = payload.mapValue ?? []
    var env = payload["env"]?.arrayValue ?? []
    env.append(.string("\(name.uppercased())=1"))
    entries.removeAll { $0.key == "env" }
    entries.append((key: "env", value: .array(env)))
    return .map(entries)
}

/// A subprocess participant: this binary re-executed as `routing-peer NAME`.
struct SpawnedPeer {
    let session: Session
    let process: SpawnedProcess
    let participant: Participant

    static func start(name: String, logger: Logger) async throws -> SpawnedPeer {
        let launched = try await PluginProcess.launch(
            executable: try selfExecutable(), arguments: ["routing-peer", name], environment: ["PATH": "/usr/bin:/bin"],
            extraDescriptors: [2: 2], configuration: .init(name: "bench"), logger: logger
        )
        try await launched.session.start()
        let calls = try launched.session.open(label: "calls")
        return SpawnedPeer(session: launched.session, process: launched.process, participant: .remote(name, calls: calls))
    }

    func stop() async {
        session.close(reason: "benchmark done")
        _ = await process.waitForExit()
    }
}

/// The child side: answers job calls with their payload and hooks by adding to "env".
struct RoutingPeer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "routing-peer", abstract: "Internal: a subprocess participant.", shouldDisplay: false)

    @Argument var name: String

    func run() async throws {
        let session = try await Session.overFileDescriptors(
            read: 3, write: 4, role: .acceptor, configuration: .init(name: name), logger: Logger(label: name)
        )
        try await session.start()
        let name = self.name
        await withTaskExecutorPreference(session.taskExecutor) {
            await withDiscardingTaskGroup { group in
                while let channel = try? await session.accept() {
                    group.addTask {
                        while let request = try? await channel.nextRequest() {
                            guard let invocation = try? Invocation(wire: request.body) else {
                                try? await request.fail(code: "bad.request", message: "not an invocation")
                                continue
                            }
                            switch invocation.kind {
                            case .hook: try? await request.respond(.fields(("payload", appendEnv(invocation.payload, name))))
                            case .pipeline: try? await request.respond(.array([.fields(("type", .string(invocation.name)), ("body", invocation.payload))]))
                            default: try? await request.respond(invocation.payload)
                            }
                        }
                    }
                }
            }
        }
    }
}
