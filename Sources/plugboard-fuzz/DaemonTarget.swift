#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import Spawn

/// The integers that have killed or confused daemons before: every integer field of every
/// request and frame is tried with each.
enum EdgeValues {
    static let all: [Value] = [
        .int(0), .int(-1), .int(1 << 31), .int(1 << 32), .int(1 << 53), .int(Int64.max), .uint(UInt64.max), .int(Int64.min),
    ]

    /// `value` with every integer in it replaced by an edge value, chosen by `choice` (one
    /// byte of the input per integer, cycling), so that the fuzzer can steer which.
    static func substitute(_ value: Value, _ choice: inout ArraySlice<UInt8>, all input: [UInt8]) -> Value {
        func next() -> Int {
            if choice.isEmpty { choice = input.isEmpty ? [0] : input[...] }
            return Int(choice.popFirst() ?? 0)
        }
        switch value {
        case .int, .uint:
            let pick = next()
            return pick < 64 ? value : all[pick % all.count]
        case .array(let items):
            return .array(items.map { substitute($0, &choice, all: input) })
        case .map(let entries):
            return .map(entries.map { (key: $0.key, value: substitute($0.value, &choice, all: input)) })
        default:
            return value
        }
    }
}

/// A real plugboardd, started once per fuzzing process, that every `admin` input is sent
/// to: as an admin request, and through the `fz.call` job as an engine request of a plugin.
/// The invariant: the daemon never dies, and every request ends with an answer or an error
/// within 10 s.
final class DaemonUnderFuzz: Sendable {
    /// Admin commands the fuzzer may send: everything but adding, removing and disabling
    /// plugins (fuzzed `plugin.add --exec` would run arbitrary commands on this machine).
    static let commands: [AdminCommand] = [
        .pluginList, .pluginInspect, .pluginSet, .pluginGrant, .pluginRestart, .pluginEnable, .call, .callBest, .callAll,
        .endpoints, .hooks, .pipeline, .pipelineSend,
    ]

    let process: SpawnedProcess
    let directory: String
    private let admin = NIOLockedValueBox<(Session, Sender)?>(nil)
    static let logger = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })

    static let shared: DaemonUnderFuzz = {
        do {
            return try DaemonUnderFuzz()
        } catch {
            fatalError("plugboard-fuzz: cannot start plugboardd for the admin target: \(error)")
        }
    }()

    private init() throws {
        // The daemon's own build: next to this binary (replay), or where PLUGBOARD_FUZZ_BIN says (libFuzzer build).
        let bin = ProcessInfo.processInfo.environment["PLUGBOARD_FUZZ_BIN"]
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
        directory = "/tmp/plugboard-fuzz-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Through the shim: the daemon dies with this process, even when a crash ends it.
        process = try ProcessSpawner.spawn(SpawnOptions(
            executable: bin + "/plugboard-exec-shim",
            arguments: [String(getpid()), bin + "/plugboardd", "--admin-socket", directory + "/admin.sock", "--state-dir", directory + "/state",
                        "--shutdown-grace", "1", "--log-level", "critical", "--plugin", "echo",
                        "--plugin-exec", "fz=\(bin)/plugboard-test-plugin provides=fz.echo calls=echo,state.get,state.put,events.publish,fz.echo"],
            environment: ["PATH": "/usr/bin:/bin"]
        ))
        let ready = DispatchTime.now() + 60
        while access(directory + "/admin.sock", F_OK) != 0 {
            guard DispatchTime.now() < ready, process.exitStatus == nil else { fatalError("plugboard-fuzz: plugboardd did not start") }
            usleep(20_000)
        }
        atexit { DaemonUnderFuzz.stopShared() }
    }

    private static func stopShared() {
        shared.process.signal(SIGKILL)
        try? FileManager.default.removeItem(atPath: shared.directory)
    }

    /// An admin channel, connected once and again after the daemon hangs up.
    private func channel() async throws -> Sender {
        if let (session, sender) = admin.withLockedValue({ $0 }), session.closeReason == nil { return sender }
        let session = try await Session.connect(unixSocketPath: directory + "/admin.sock", configuration: .init(name: "fuzz"), logger: Self.logger)
        try await session.start()
        let sender = try session.open(label: "admin")
        admin.withLockedValue { $0 = (session, sender) }
        return sender
    }

    /// Sends one input as a request; fatal when the daemon died or did not answer.
    func send(_ data: [UInt8]) async {
        guard let first = data.first else { return }
        let command = Self.commands[Int(first) % Self.commands.count]
        var body: [(key: Value, value: Value)] = [(key: "command", value: .string(command.rawValue))]
        let rest = Array(data.dropFirst())
        if let decoded = try? Msgpack.decode(rest), case .map(let entries) = decoded {
            body += entries.filter { $0.key != "command" }
        }
        // Defaults that reach deep: the fuzz plugin, and an engine call through it.
        if !body.contains(where: { $0.key == "name" }) { body.append((key: "name", value: "fz")) }
        if command == .call, !body.contains(where: { $0.key == "job" }) {
            body.append((key: "job", value: "fz.call"))
        }
        var choice = rest[...]
        let request = EdgeValues.substitute(.map(body), &choice, all: rest)
        let verbose = ProcessInfo.processInfo.environment["PLUGBOARD_FUZZ_VERBOSE"] != nil
        do {
            let sender = try await channel()
            let answer = try await sender.request(request, timeout: .seconds(10))
            if verbose { print("\(request) -> \(String(describing: answer).prefix(200))") }
        } catch let error as ChanError where error.code == .timeout {
            fatalError("plugboardd did not answer \(request) within 10 s")
        } catch {
            // An error answer is an answer.
            if verbose { print("\(request) -> error \(String(describing: error).prefix(200))") }
        }
        if let status = process.exitStatus {
            fatalError("plugboardd died (\(status)) on the admin request \(request)")
        }
    }
}
