#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chan
import Engine
import Foundation
import Logging
import NIOConcurrencyHelpers
import Remote
import Spawn

/// `plugboard-bench remote`: the same plugin (plugboard-plugin-echo) over fds 3/4 and as a
/// remote plugin over TCP with mutual TLS on loopback, in the same run.
struct RemoteBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote",
        abstract: "Job calls to plugboard-plugin-echo over fds 3/4 and connected in over TCP with mutual TLS (loopback).",
        discussion: """
            Scenarios (each sequential, in_flight 1, and with 64 calls in flight, in_flight 64):
              remote.fds        the plugin as an exec plugin, its session on fds 3/4
              remote.tcp_tls    the same binary, started by the benchmark, connected in over
                                TCP to 127.0.0.1 with mutual TLS (PLUGBOARD_CONNECT)
            Certificates are made in a temp directory with the openssl CLI. The limit columns
            are the fds 3/4 plugin's sequential numbers.
            """
    )

    @Option(help: "Timed calls per scenario.")
    var calls: Int = 20_000

    @Option(help: "Untimed calls first.")
    var warmup: Int = 2_000

    func run() async throws {
        let logger = Logger(label: "bench", factory: { _ in SwiftLogNoOpLogHandler() })
        let dir = (try selfExecutable() as NSString).deletingLastPathComponent
        let plugin = dir + "/plugboard-plugin-echo"
        guard access(plugin, X_OK) == 0 else { throw ValidationError("\(plugin) is missing: build it first (make bench does)") }
        let payload: Value = .fields(("image", "busybox"), ("env", .array([])))

        // Over fds 3/4.
        let local = Engine(logger: logger)
        try await local.boot([PluginSpec(name: "echo", kind: .exec(command: plugin, arguments: []))])
        let fdsSequential = try await sequential(local, payload)
        let fdsParallel = try await parallel(local, payload)
        await local.shutdown(grace: .seconds(1))
        report("remote.fds", 1, fdsSequential, limit: fdsSequential)
        report("remote.fds", 64, fdsParallel, limit: fdsSequential)

        // Over TCP with mutual TLS.
        let certs = NSTemporaryDirectory() + "plugboard-bench-tls-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: certs) }
        try makeCertificates(in: certs)
        let remote = Engine(logger: logger)
        try await remote.boot([PluginSpec(name: "echo", kind: .remote(RemoteAccess()))])
        let listener = try await RemoteListener.bind(
            .tcp(host: "127.0.0.1", port: 0), tls: TLSFiles(certificate: certs + "/daemon.pem", key: certs + "/daemon.key", ca: certs + "/ca.pem"),
            maxFrameSize: Engine.maxFrameFromPlugins, logger: logger
        )
        let serving = Task { await remote.servePlugins(on: listener) }
        let events = remote.events()
        // Its log lines must not mix with the JSON lines on our stdout.
        let devNull = open("/dev/null", O_WRONLY)
        defer { close(devNull) }
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: plugin, arguments: [],
            environment: [
                "PLUGBOARD_CONNECT": "\(listener.endpoint)", "PLUGBOARD_TLS_CERT": certs + "/echo.pem",
                "PLUGBOARD_TLS_KEY": certs + "/echo.key", "PLUGBOARD_TLS_CA": certs + "/ca.pem", "PATH": "/usr/bin:/bin",
            ],
            fileDescriptors: [1: devNull, 2: devNull]
        ))
        for await event in events where event.plugin == "echo" && event.state == .active { break }
        let tlsSequential = try await sequential(remote, payload)
        let tlsParallel = try await parallel(remote, payload)
        process.signal(SIGKILL)
        _ = await process.waitForExit()
        await listener.close()
        await serving.value
        await remote.shutdown(grace: .seconds(1))
        report("remote.tcp_tls", 1, tlsSequential, limit: fdsSequential, extra: [("vs_fds_p50", .double(tlsSequential.p50 / fdsSequential.p50))])
        report("remote.tcp_tls", 64, tlsParallel, limit: fdsSequential, extra: [("vs_fds_calls_per_s", .double(tlsParallel.perSecond / fdsParallel.perSecond))])
    }

    struct Measurement {
        var p50: Double
        var p99: Double
        var perSecond: Double
    }

    func sequential(_ engine: Engine, _ payload: Value) async throws -> Measurement {
        for _ in 0..<warmup { _ = try await engine.hub.call("echo", payload) }
        var samples = Samples()
        samples.nanos.reserveCapacity(calls)
        let start = now()
        for _ in 0..<calls {
            let t0 = now()
            _ = try await engine.hub.call("echo", payload)
            samples.add(now() - t0)
        }
        let elapsed = Double(now() - start) / 1e9
        return Measurement(p50: samples.percentile(0.5), p99: samples.percentile(0.99), perSecond: Double(calls) / elapsed)
    }

    /// `calls` calls, 64 at a time in flight; each call's own latency.
    func parallel(_ engine: Engine, _ payload: Value) async throws -> Measurement {
        let width = 64
        let perWorker = max(1, calls / width)
        let start = now()
        let all = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for _ in 0..<width {
                group.addTask {
                    var mine: [UInt64] = []
                    mine.reserveCapacity(perWorker)
                    for _ in 0..<perWorker {
                        let t0 = now()
                        _ = try await engine.hub.call("echo", payload)
                        mine.append(now() - t0)
                    }
                    return mine
                }
            }
            var all: [UInt64] = []
            for try await part in group { all += part }
            return all
        }
        let elapsed = Double(now() - start) / 1e9
        var samples = Samples()
        samples.nanos = all
        return Measurement(p50: samples.percentile(0.5), p99: samples.percentile(0.99), perSecond: Double(all.count) / elapsed)
    }

    func report(_ scenario: String, _ inFlight: Int, _ m: Measurement, limit: Measurement, extra: [(String, JSONField)] = []) {
        print(jsonLine([
            ("scenario", .string(scenario)),
            ("in_flight", .int(inFlight)),
            ("calls", .int(calls)),
            ("p50_us", .double(m.p50)),
            ("p99_us", .double(m.p99)),
            ("calls_per_s", .double(m.perSecond)),
            ("limit_p50_us", .double(limit.p50)),
            ("limit_msgs_per_s", .double(limit.perSecond)),
        ] + extra))
    }

    /// A CA, the daemon's certificate and the plugin's (CN=echo), with the openssl CLI.
    func makeCertificates(in dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        try openssl(["req", "-x509"] + ec + ["-keyout", dir + "/ca.key", "-out", dir + "/ca.pem", "-subj", "/CN=bench-ca", "-days", "1"])
        for name in ["daemon", "echo"] {
            try openssl(["req"] + ec + ["-keyout", dir + "/\(name).key", "-out", dir + "/\(name).csr", "-subj", "/CN=\(name)"])
            try openssl(["x509", "-req", "-in", dir + "/\(name).csr", "-CA", dir + "/ca.pem", "-CAkey", dir + "/ca.key", "-CAcreateserial", "-out", dir + "/\(name).pem", "-days", "1"])
        }
    }

    func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ValidationError("openssl \(arguments.joined(separator: " ")) failed (openssl is in make deps)") }
    }
}
