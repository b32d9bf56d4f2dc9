#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import NIOConcurrencyHelpers
import PluginKit
import Routing
import Spawn
import Testing
import TestSupport
@testable import Engine

func testPlugin(_ name: String, _ options: String = "", backoff: Backoff = Backoff(initial: .milliseconds(20), jitter: 0),
                crashLoop: CrashLoopLimit = CrashLoopLimit(), restart: RestartPolicy = .onFailure, grantAll: Bool = true) throws -> PluginSpec {
    PluginSpec(
        name: name, kind: .exec(command: try builtExecutable("plugboard-test-plugin"), arguments: []),
        options: options, restartPolicy: restart, backoff: backoff, crashLoop: crashLoop, grantAll: grantAll
    )
}

struct Echo: Plugin {
    func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "echo")
        d.job("echo") { $0 }
        return d
    }
}

/// Waits for the first event matching `predicate`, with a deadline.
func waitForEvent(_ events: AsyncStream<EngineEvent>, _ what: String, _ predicate: @escaping @Sendable (EngineEvent) -> Bool) async throws -> EngineEvent {
    try await withDeadline(30, what) {
        for await event in events where predicate(event) { return event }
        throw DeadlineExceeded(what: "\(what) (the event stream ended)")
    }
}

@Suite("engine: built-in and exec plugins, supervised", .serialized)
struct EngineTests {
    @Test("built-in and exec plugins serve calls once booted")
    func bootAndCall() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([PluginSpec(name: "echo", kind: .builtin(Echo())), try testPlugin("t1", "provides=t1.work")])
        #expect(try await engine.hub.call("echo", "in process") == "in process")
        #expect(try await engine.hub.call("t1.work", ["x": 1]) == ["x": 1])
        #expect(try await engine.hub.call("t1.restarts") == 0)
        let status = await engine.status()
        #expect(status.map(\.state) == [.active, .active])
        #expect(status.first { $0.name == "t1" }?.pid != nil)
        #expect(status.first { $0.name == "echo" }?.pid == nil)
        await engine.shutdown(grace: .seconds(2))
    }

    @Test("kill -9 during 1,000 concurrent calls: each call ends with a result or a crash error, and the plugin comes back")
    func killDuringCalls() async throws {
        let engine = Engine(logger: quietLogger)
        let events = engine.events()
        try await engine.boot([try testPlugin("victim", "provides=work")])
        guard let pid = await engine.status().first?.pid else { Issue.record("no pid"); return }
        let done = NIOLockedValueBox((ok: 0, crashed: 0, other: [String]()))
        let halfway = Signal()
        try await withDeadline(60, "1,000 calls to end") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<1000 {
                    group.addTask {
                        do {
                            let answer = try await engine.hub.call("work", .int(Int64(i)), timeout: .seconds(30))
                            let n = done.withLockedValue { d in
                                if answer == .int(Int64(i)) { d.ok += 1 } else { d.other.append("wrong answer \(answer)") }
                                return d.ok
                            }
                            if n == 200 { halfway.fire() }
                        } catch let error as RoutingError where error.code == .ownerGone {
                            done.withLockedValue { $0.crashed += 1 }
                            #expect(error.reason.contains("victim"))
                        } catch {
                            done.withLockedValue { $0.other.append("\(error)") }
                        }
                    }
                }
                group.addTask {
                    await halfway.wait()
                    kill(pid, SIGKILL)
                }
                try await group.waitForAll()
            }
        }
        let result = done.withLockedValue { $0 }
        #expect(result.ok + result.crashed == 1000, "other outcomes: \(result.other.prefix(3))")
        #expect(result.other.isEmpty)
        #expect(result.ok >= 200)
        _ = try await waitForEvent(events, "the plugin to come back") { $0.plugin == "victim" && $0.state == .active && $0.restarts == 1 }
        #expect(try await engine.hub.call("work", "again") == "again")
        #expect(try await engine.hub.call("victim.restarts") == 1, "a restarted plugin learns its restart count")
        await engine.shutdown(grace: .seconds(2))
    }

    @Test("an in-flight call to a crashing plugin fails at once, naming the plugin and its exit")
    func crashErrorNamesExit() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([try testPlugin("mortal", restart: .never)])
        let hanging = Task { try await engine.hub.call("mortal.hang", timeout: .seconds(120)) }
        await #expect {
            try await engine.hub.call("mortal.crash", timeout: .seconds(120))
        } throws: { error in
            let e = error as? RoutingError
            return e?.code == .ownerGone && e?.reason.contains("mortal") == true && e?.reason.contains("exited with status 9") == true
        }
        try await withDeadline(20) {
            await #expect { try await hanging.value } throws: { ($0 as? RoutingError)?.code == .ownerGone }
        }
        await engine.shutdown(grace: .seconds(1))
    }

    @Test("a plugin that keeps crashing at start ends failed after the limit, with the backoff observed")
    func crashLoop() async throws {
        let engine = Engine(logger: quietLogger)
        let events = engine.events()
        let backoff = Backoff(initial: .milliseconds(50), maximum: .seconds(2), jitter: 0)
        try await engine.boot([try testPlugin("loopy", "crash-on-restart", backoff: backoff, crashLoop: CrashLoopLimit(restarts: 3, window: .seconds(60)))])
        let clock = ContinuousClock()
        let restarting = NIOLockedValueBox<[ContinuousClock.Instant]>([])
        let crash = Task { try await engine.hub.call("loopy.crash", timeout: .seconds(60)) }
        let failed = try await waitForEvent(events, "the plugin to be marked failed") { event in
            if event.plugin == "loopy" && event.state == .restarting { restarting.withLockedValue { $0.append(clock.now) } }
            return event.plugin == "loopy" && event.state == .failed
        }
        _ = try? await crash.value
        #expect(failed.detail.contains("crash loop"))
        let times = restarting.withLockedValue { $0 }
        #expect(times.count == 3, "three restarts before the limit: \(times.count)")
        // Each wait is at least the backoff delay: 50 ms, 100 ms, ... (the start itself adds time).
        for i in 1..<times.count {
            #expect(times[i] - times[i - 1] >= backoff.delay(attempt: i), "gap \(i): \(times[i] - times[i - 1])")
        }
        #expect(await engine.status().first?.state == .failed)
        await #expect { try await engine.hub.call("loopy.restarts") } throws: {
            let e = $0 as? RoutingError
            return e?.code == .ownerGone && e?.reason.contains("its plugin loopy failed (crash loop") == true
        }
        await engine.shutdown(grace: .seconds(1))
    }

    @Test("boot order follows requires; a cycle or a missing requirement is a clear error")
    func bootOrder() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([
            try testPlugin("a", "requires=b.job"),
            try testPlugin("b", "provides=b.job requires=c.job"),
            try testPlugin("c", "provides=c.job"),
        ])
        #expect(engine.bootOrder == ["c", "b", "a"])
        await engine.shutdown(grace: .seconds(1))

        let cyclic = Engine(logger: quietLogger)
        await #expect {
            try await cyclic.boot([try testPlugin("x", "provides=x.job requires=y.job"), try testPlugin("y", "provides=y.job requires=x.job")])
        } throws: { error in
            let e = error as? EngineError
            return e?.code == .bootOrder && e?.reason.contains("cycle") == true && e?.reason.contains("x") == true
        }
        let missing = Engine(logger: quietLogger)
        await #expect {
            try await missing.boot([try testPlugin("z", "requires=nothing.job")])
        } throws: { error in
            (error as? EngineError)?.reason == "plugin z requires job nothing.job, which no plugin provides"
        }
    }

    @Test("a plugin that writes garbage to fd 4 is cut off and restarted; the others keep serving")
    func garbage() async throws {
        let engine = Engine(logger: quietLogger)
        let events = engine.events()
        try await engine.boot([try testPlugin("liar", "provides=liar.work"), try testPlugin("honest", "provides=honest.work")])
        _ = try? await engine.hub.call("liar.garbage", timeout: .seconds(10))
        #expect(try await engine.hub.call("honest.work", 1) == 1)
        // Active again, or an end state that says why not (a cut-off plugin that exits 0
        // was once taken for a clean exit and left stopped).
        let back = try await waitForEvent(events, "the liar to be restarted") {
            $0.plugin == "liar" && (($0.state == .active && $0.restarts >= 1) || $0.state == .stopped || $0.state == .failed)
        }
        #expect(back.state == .active && back.restarts == 1, "\(back)")
        #expect(try await engine.hub.call("liar.work", 2) == 2)
        #expect(try await engine.hub.call("honest.work", 3) == 3)
        await engine.shutdown(grace: .seconds(1))
    }

    @Test("a plugin may call only the jobs it asked for")
    func permissions() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([
            PluginSpec(name: "echo", kind: .builtin(Echo())),
            try testPlugin("caller", "calls=echo"),
            try testPlugin("other", "provides=secret"),
        ])
        #expect(try await engine.hub.call("caller.call", .fields(("job", "echo"), ("argument", "via engine"))) == "via engine")
        await #expect {
            try await engine.hub.call("caller.call", .fields(("job", "secret"), ("argument", 1)))
        } throws: { error in
            let e = error as? RoutingError
            return e?.handlerCode == "permission.denied" || e?.reason.contains("may not call job secret") == true
        }
        await engine.shutdown(grace: .seconds(1))
    }
}

@Suite("exec plugin environment and output", .serialized)
struct ExecEnvironmentTests {
    @Test("the child's environment carries its name, the protocol, its restart count and its options")
    func environment() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([try testPlugin("envy", "provides=x.job")])
        let env = try await engine.hub.call("envy.env")
        #expect(env["PLUGBOARD_PLUGIN_NAME"] == "envy")
        #expect(env["PLUGBOARD_PROTOCOL"] == "plugboard-chan/1")
        #expect(env["PLUGBOARD_RESTARTS"] == "0")
        #expect(env["PLUGBOARD_OPTIONS"] == "provides=x.job")
        await engine.shutdown(grace: .seconds(1))
    }

    @Test("without NAME= the plugin's declared name is used")
    func declaredName() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([PluginSpec(name: nil, kind: .exec(command: try builtExecutable("plugboard-plugin-echo"), arguments: []))])
        #expect(await engine.status().map(\.name) == ["echo"])
        #expect(try await engine.hub.call("echo", 5) == 5)
        await engine.shutdown(grace: .seconds(1))
    }

    @Test("a plugin that prints on stdout cannot break the protocol; its lines reach the log tagged with its name")
    func printing() async throws {
        let log = CapturedLog()
        let engine = Engine(logger: log.logger)
        try await engine.boot([try testPlugin("chatty")])
        for i in 0..<20 { #expect(try await engine.hub.call("chatty.print", .int(Int64(i))) == "printed") }
        let line = try await withDeadline(10, "the printed line in the log") { await log.waitFor("printed on stdout: 19") }
        #expect(line.metadata["plugin.name"] == "chatty")
        #expect(line.metadata["plugin.stream"] == "stdout")
        await engine.shutdown(grace: .seconds(1))
    }
}

@Suite("the shipped plugins")
struct ShippedPluginTests {
    static let spec: Value = .fields(("image", "busybox"), ("mounts", .array([])))

    @Test("host-mount adds its bind mount to every container.create, built in or as a subprocess")
    func hostMount() async throws {
        let builtin = Engine(logger: quietLogger)
        try await builtin.boot([PluginSpec(name: "host-mount", kind: .builtin(HostMountPluginForTests.plugin), options: "/data /var/data")])
        let outcome = try await builtin.hooks.run("container.create", payload: Self.spec, object: "c1")
        #expect(outcome.payload["mounts"]?.arrayValue?.first?["destination"] == "/var/data")
        #expect(outcome.attribution["mounts[0]"] == "host-mount")
        await builtin.shutdown(grace: .seconds(1))

        let exec = Engine(logger: quietLogger)
        try await exec.boot([PluginSpec(name: "hm", kind: .exec(command: try builtExecutable("plugboard-plugin-host-mount"), arguments: []), options: "/srv /mnt/srv")])
        let remote = try await exec.hooks.run("container.create", payload: Self.spec, object: "c1")
        #expect(remote.payload["mounts"]?.arrayValue?.first?["source"] == "/srv")
        #expect(remote.attribution["mounts[0]"] == "hm")
        await exec.shutdown(grace: .seconds(1))
    }

    @Test("host-mount with a bad option is refused before it starts, with a message saying what it needs")
    func hostMountBadOption() async throws {
        let engine = Engine(logger: quietLogger)
        await #expect {
            try await engine.boot([PluginSpec(name: "host-mount", kind: .builtin(HostMountPluginForTests.plugin), options: "data")])
        } throws: { error in
            "\(error)".contains("HOST_DIR CONTAINER_DIR")
        }
        await engine.shutdown(grace: .seconds(1))
    }
}

@Suite("docs/PROTOCOL.md is true")
struct ProtocolDocumentTests {
    /// The Python plugin printed in docs/PROTOCOL.md, as a file.
    static func pythonPlugin() throws -> String {
        let doc = try String(contentsOfFile: #filePath.replacingOccurrences(of: "Tests/EngineTests/EngineTests.swift", with: "docs/PROTOCOL.md"), encoding: .utf8)
        guard let section = doc.range(of: "## Writing a plugin in Python"),
              let start = doc.range(of: "```python\n", range: section.upperBound..<doc.endIndex),
              let end = doc.range(of: "\n```", range: start.upperBound..<doc.endIndex)
        else { throw EngineError(.badDeclaration, "no python block in docs/PROTOCOL.md") }
        let path = "/tmp/plugboard-doc-plugin-\(getpid()).py"
        try String(doc[start.upperBound..<end.lowerBound]).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("the Python plugin in the protocol document runs under the engine and answers its job")
    func pythonPluginFromTheDocument() async throws {
        let script = try Self.pythonPlugin()
        defer { unlink(script) }
        let engine = Engine(logger: quietLogger)
        try await engine.boot([PluginSpec(name: "py", kind: .exec(command: "python3", arguments: [script]))])
        #expect(try await engine.hub.call("py.echo", .fields(("hello", "from swift"), ("n", 42))) == .fields(("hello", "from swift"), ("n", 42)))
        #expect(try await engine.hub.call("py.echo", .binary([UInt8](repeating: 7, count: 100_000))) == .binary([UInt8](repeating: 7, count: 100_000)))
        await engine.shutdown(grace: .seconds(2))
    }
}
