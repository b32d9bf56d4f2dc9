import ArgumentParser

/// Benchmarks, not tests: each scenario prints one JSON object per line.
@main
struct PlugboardBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard-bench",
        abstract: "Measure Plugboard's latency and throughput next to the raw limit of the machine.",
        discussion: """
            Each scenario prints one JSON object per line with at least scenario, p50_us, p99_us,
            calls_per_s, limit_p50_us and limit_msgs_per_s. The limit is measured in the same run:
            a ping-pong of a payload of the same size between two processes over two plain pipes.

            Example:
              swift run -c release plugboard-bench chan --calls 20000
            """,
        subcommands: [ChanBenchmark.self, RoutingBenchmark.self, DaemonBenchmark.self, DaemonCallBenchmark.self, DaemonCallClient.self, RemoteBenchmark.self, ContainerBenchmark.self, ShellBenchmark.self, ImageBenchmark.self, PythonBenchmark.self, ChanPeer.self, PipePeer.self, RoutingPeer.self, PluginCaller.self]
    )
}
