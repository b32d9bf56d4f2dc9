#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Spawn
import Testing
import TestSupport
@testable import Chan

/// Every integer that arrives from a plugin or an admin client is checked or saturating:
/// each test sends the value to a real plugboardd and then checks that it still serves.
/// (Each daemon here gets its own --admin-socket and --state-dir from `DaemonPlace`.)
@Suite("no integer from the wire can trap the daemon", .serialized)
struct WireIntegerTests {
    let place = DaemonPlace("ints")
    var dir: String { place.dir }
    var socket: String { place.socket }


    /// The daemon is alive and answers a call from a new client.
    func expectServing(_ daemon: Daemon, after what: String) async throws {
        #expect(daemon.process.exitStatus == nil, "plugboardd died after \(what): \(daemon.log.all.suffix(5))")
        let echo = try await place.cli(["call", "echo", "\"still here\""])
        #expect(echo.status == .exited(0) && echo.out.contains("still here"), "after \(what): \(echo.err)")
    }

    @Test("CREDIT frames granting 2^63 and 2^64-1 bytes on a channel the daemon sends on", arguments: [UInt64(1) << 63, UInt64.max])
    func hugeCredit(bytes: UInt64) async throws {
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            let session = try await Session.connect(unixSocketPath: socket, configuration: .init(name: "credit-attacker"), logger: quietLogger)
            try await session.start()
            let admin = try session.open(label: "admin")
            // An events subscription: the daemon holds `sink` and sends on it, so CREDIT for
            // its id reaches the daemon's flow-control arithmetic.
            let (sink, events) = try session.makePipe()
            _ = try await admin.request(.fields(("command", "events"), ("sink", .channel(.sender(sink)))), timeout: .seconds(10))
            session.write(.credit(id: events.id, bytes: bytes))
            session.write(.credit(id: events.id, bytes: bytes))
            // The same credit on a channel the daemon does not send on, and on an unknown id.
            session.write(.credit(id: admin.id, bytes: bytes))
            session.write(.credit(id: UInt64.max, bytes: bytes))
            // A request on the attacked session still gets its answer (frames are in order).
            let answer = try await admin.request(.fields(("command", "call"), ("job", "echo"), ("argument", 7)), timeout: .seconds(10))
            #expect(answer == 7)
            session.close(reason: "done")
            try await expectServing(daemon, after: "CREDIT \(bytes)")
        }
        await place.stop(daemon)
    }

    @Test("an admin call with timeout_ms of 10^13, 2^63-1, 0 and -1 ends with a result or an error")
    func hugeCallTimeouts() async throws {
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            let session = try await Session.connect(unixSocketPath: socket, configuration: .init(name: "timeouts"), logger: quietLogger)
            try await session.start()
            let admin = try session.open(label: "admin")
            for ms: Int64 in [10_000_000_000_000, Int64.max, Int64.min, -1, 0] {
                let body: Value = .fields(("command", "call"), ("job", "echo"), ("argument", "t"), ("timeout_ms", .int(ms)))
                do {
                    let answer = try await admin.request(body, timeout: .seconds(10))
                    #expect(answer == "t", "timeout_ms \(ms)")
                } catch let error as ChanError {
                    // A zero or negative timeout may pass before the echo answers: then the
                    // call says so, as a timeout.
                    #expect(ms <= 0 && error.reason.contains("timed out"), "timeout_ms \(ms): \(error)")
                }
            }
            // uint64 beyond Int64.max is not a timeout: the request is refused, saying why.
            let unsigned: Value = .fields(("command", "call"), ("job", "echo"), ("argument", "u"), ("timeout_ms", .uint(.max)))
            await #expect {
                try await admin.request(unsigned, timeout: .seconds(10))
            } throws: { error in
                (error as? ChanError)?.remoteCode == "admin.bad-request"
            }
            // An events buffer of 2^63-1 entries is clamped, not allocated.
            let (sink, events) = try session.makePipe()
            let big: Value = .fields(("command", "events"), ("sink", .channel(.sender(sink))), ("buffer", .int(.max)))
            #expect(try await admin.request(big, timeout: .seconds(10)) == "following")
            withExtendedLifetime(events) {}
            session.close(reason: "done")
            try await expectServing(daemon, after: "huge timeouts")
        }
        await place.stop(daemon)
    }

    @Test("plugin set with durations past one day is refused, naming the limit")
    func hugeSettings() async throws {
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            for setting in ["backoff-max=153722867280912930m", "start-timeout=9223372036854775807s", "backoff-initial=1441m", "crash-loop-window=86400001ms"] {
                let set = try await place.cli(["plugin", "set", "echo", setting])
                #expect(set.status != .exited(0), "\(setting) was accepted")
                #expect(set.err.contains("at most one day"), "\(setting): \(set.err)")
            }
            #expect(try await place.cli(["plugin", "set", "echo", "backoff-max=1440m"]).status == .exited(0))
            try await expectServing(daemon, after: "huge settings")
        }
        await place.stop(daemon)
    }

    @Test("a hook a plugin declares with a timeout of 2^63-1 ms runs, clamped, when the operator creates a container")
    func hugeHookTimeout() async throws {
        try requireContainerHost()
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon([
            "--plugin", "containers",
            "--plugin-exec", "greedy=\(plugin) hook=container.create:\(Int64.max)",
        ])
        try await whileRunning(daemon) {
            let hooks = try await place.cli(["hooks", "--format", "json"])
            #expect(hooks.out.contains(#""timeout" : "1d""#) && hooks.out.contains(#""timeout_ms" : 86400000"#), "the declared timeout is clamped to one day: \(hooks.out)")
            let rootfs = try busyboxRootfs(in: dir)
            let created = try await place.cli(["call", "container.create", #"{"rootfs": "\#(rootfs)", "args": ["true"], "name": "clamped"}"#])
            #expect(created.status == .exited(0), "\(created.err)")
            _ = try await place.cli(["call", "container.rm", #"{"id": "clamped", "force": true}"#])
            try await expectServing(daemon, after: "a hook with a huge timeout")
        }
        await place.stop(daemon)
    }
}
