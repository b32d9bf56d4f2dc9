import Chan
import NIOConcurrencyHelpers
import Routing
import Testing
import TestSupport
@testable import Hub

@Suite("hub: endpoints, extension points, deadlines, departures")
struct HubTests {
    func echo(_ name: String) -> Participant {
        .inProcess(name) { invocation in invocation.payload }
    }

    @Test("a registered job answers its calls")
    func callInProcess() async throws {
        let hub = Hub(logger: quietLogger)
        try hub.register(jobs: ["echo"], for: echo("echo-plugin"))
        #expect(try await hub.call("echo", ["x": 1]) == ["x": 1])
        #expect(hub.endpoints == [Hub.Endpoint(name: "echo", owner: "echo-plugin", restarting: false, remote: false)])
    }

    @Test("a malformed reply is an error naming the plugin; an aborted reply is a failure, not a departure")
    func malformedReply() async throws {
        let hub = Hub(logger: quietLogger)
        let (participant, peer) = try await PeerProcess.participant("odd")
        try hub.register(jobs: ["malformed"], for: participant)
        await #expect { try await hub.call("malformed", 1) } throws: { error in
            let e = error as? RoutingError
            return e?.code == .badAnswer && e?.reason.contains("plugin odd answered job malformed with a malformed reply") == true
        }
        // A live plugin that aborts one reply failed that call; it did not go away.
        try hub.register(jobs: ["abort"], for: participant)
        await #expect { try await hub.call("abort", 1) } throws: { error in
            let e = error as? RoutingError
            return e?.code == .handlerFailed && e?.reason.contains("aborted its reply") == true && e?.reason.contains("changed my mind") == true
        }
        await peer.stop()
    }

    @Test("callBest fails over to the next provider when the best one goes away mid-call; callAll answers in rank order")
    func providerFailover() async throws {
        let hub = Hub(logger: quietLogger)
        let entered = Signal()
        hub.provide("volume.driver", priority: 20, by: .inProcess("best") { _ in
            entered.fire()
            let (stream, continuation) = AsyncStream.makeStream(of: Never.self)
            for await _ in stream {}
            withExtendedLifetime(continuation) {}
            return "never"
        })
        hub.provide("volume.driver", priority: 10, by: .inProcess("second") { invocation in .string("second:\(invocation.payload.stringValue ?? "")") })
        #expect(hub.providers(of: "volume.driver").map(\.owner) == ["best", "second"])
        let call = Task { try await hub.callBest("volume.driver", "v", timeout: .seconds(30)) }
        try await withDeadline(10, "the best provider to be called") { await entered.wait() }
        hub.withdraw(owner: "best", reason: "it crashed")
        #expect(try await withDeadline(10, "the failover") { try await call.value } == "second:v")
        let all = try await hub.callAll("volume.driver", "w")
        #expect(all.map(\.plugin) == ["second"])
        hub.withdraw(owner: "second", reason: "gone")
        await #expect { try await hub.callBest("volume.driver", 1) } throws: { ($0 as? RoutingError)?.code == .noProvider }
    }

    @Test("a call waiting for a restarting owner leaves at once when its task is cancelled")
    func cancelledWaiterLeaves() async throws {
        let hub = Hub(logger: quietLogger)
        try hub.register(jobs: ["slow.job"], for: echo("p"))
        hub.withdraw(owner: "p", reason: "restarting", expectBackWithin: .seconds(3600))
        let caller = Task { try await hub.call("slow.job", 1, timeout: .seconds(3600)) }
        try await withDeadline(10, "the call to wait for p") { while hub.waitingCalls < 1 { await Task.yield() } }
        caller.cancel()
        let outcome = try await withDeadline(10, "the cancelled call to return") { await caller.result }
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(hub.waitingCalls == 0, "nothing keeps the cancelled caller")
        // The owner comes back: new calls go through.
        try hub.register(jobs: ["slow.job"], for: echo("p"))
        #expect(try await hub.call("slow.job", 2) == 2)
    }

    @Test("registering a taken name fails with an error naming the owner, and registers nothing")
    func nameConflict() async throws {
        let hub = Hub(logger: quietLogger)
        try hub.register(jobs: ["backup.run"], for: echo("alpha"))
        #expect {
            try hub.register(jobs: ["other.job", "backup.run"], for: echo("beta"))
        } throws: { error in
            let e = error as? RoutingError
            return e?.code == .nameConflict && e?.plugin == "alpha" && e?.reason.contains("alpha") == true
        }
        #expect(hub.endpoints.map(\.name) == ["backup.run"], "all or nothing: other.job must not be registered")
    }

    @Test("an unknown job is an error naming the job")
    func unknownJob() async throws {
        let hub = Hub(logger: quietLogger)
        await #expect {
            try await hub.call("frobnicate")
        } throws: { error in
            let e = error as? RoutingError
            return e?.code == .unknownJob && e?.reason.contains("frobnicate") == true
        }
    }

    @Test("extension points rank providers: higher priority first, ties by plugin name")
    func rankedProviders() async throws {
        let hub = Hub(logger: quietLogger)
        hub.provide("storage.driver", priority: 10, by: .inProcess("zfs") { _ in "zfs" })
        hub.provide("storage.driver", priority: 50, by: .inProcess("overlay") { _ in "overlay" })
        hub.provide("storage.driver", priority: 10, by: .inProcess("btrfs") { _ in "btrfs" })
        #expect(hub.providers(of: "storage.driver").map(\.owner) == ["overlay", "btrfs", "zfs"])
        #expect(hub.bestProvider(of: "storage.driver")?.owner == "overlay")
        #expect(try await hub.callBest("storage.driver", .nil) == "overlay")
        hub.withdraw(owner: "overlay", reason: "stopped")
        #expect(try await hub.callBest("storage.driver", .nil) == "btrfs")
        await #expect { try await hub.callBest("network.driver", .nil) } throws: { ($0 as? RoutingError)?.code == .noProvider }
    }

    @Test("a missed deadline is a distinct timeout error, and the plugin stays registered")
    func timeout() async throws {
        let hub = Hub(logger: quietLogger)
        let release = Signal()
        try hub.register(jobs: ["slow"], for: .inProcess("sloth") { _ in
            await release.wait()
            return "late"
        })
        try await withDeadline {
            await #expect {
                try await hub.call("slow", timeout: .milliseconds(100))
            } throws: { error in
                let e = error as? RoutingError
                return e?.code == .timeout && e?.plugin == "sloth"
            }
        }
        #expect(hub.endpoints.map(\.owner) == ["sloth"])
        release.fire()
    }

    @Test("when an owner goes away, every caller waiting on it gets an error at once")
    func ownerGoneFailsWaiters() async throws {
        let hub = Hub(logger: quietLogger)
        let started = NIOLockedValueBox(0)
        let allStarted = Signal()
        let never = Signal()  // the handler hangs until the test ends
        defer { never.fire() }
        try hub.register(jobs: ["stuck"], for: .inProcess("stuck-plugin") { _ in
            if started.withLockedValue({ $0 += 1; return $0 }) == 5 { allStarted.fire() }
            await never.wait()
            return "never"
        })
        let calls = (0..<5).map { _ in Task { try await hub.call("stuck", timeout: .seconds(3600)) } }
        try await withDeadline { await allStarted.wait() }
        hub.withdraw(owner: "stuck-plugin", reason: "crashed with SIGKILL")
        try await withDeadline(10, "callers to fail") {
            for call in calls {
                await #expect {
                    try await call.value
                } throws: { error in
                    let e = error as? RoutingError
                    return e?.code == .ownerGone && e?.reason.contains("SIGKILL") == true
                }
            }
        }
        // Later calls are told who left and why, not just "no job named".
        await #expect { try await hub.call("stuck") } throws: {
            let e = $0 as? RoutingError
            return e?.code == .ownerGone && e?.reason.contains("its plugin stuck-plugin crashed with SIGKILL") == true
        }
    }

    @Test("waiting for an owner's calls to drain ends when the last call ends, or when cancelled")
    func drain() async throws {
        let hub = Hub(logger: quietLogger)
        let release = Signal()
        let started = Signal()
        try hub.register(jobs: ["slow"], for: .inProcess("p") { _ in
            started.fire()
            await release.wait()
            return "done"
        })
        await hub.inFlight.waitUntilDrained(owner: "p")  // nothing in flight: returns at once
        let call = Task { try await hub.call("slow", timeout: .seconds(60)) }
        try await withDeadline { await started.wait() }
        let drained = Task { await hub.inFlight.waitUntilDrained(owner: "p") }
        release.fire()
        try await withDeadline(30, "the drain after the last call") { await drained.value }
        #expect(try await call.value == "done")

        let again = Signal()
        let inFlight = Signal()
        try hub.register(jobs: ["slow2"], for: .inProcess("p") { _ in
            inFlight.fire()  // the call is tracked before its handler starts
            await again.wait()
            return "late"
        })
        let pending = Task { try await hub.call("slow2", timeout: .seconds(60)) }
        try await withDeadline { await inFlight.wait() }
        #expect(hub.inFlight.count(owner: "p") == 1)
        let waiter = Task { await hub.inFlight.waitUntilDrained(owner: "p") }
        waiter.cancel()
        try await withDeadline(30, "a cancelled drain wait to return") { await waiter.value }
        again.fire()
        _ = try await pending.value
    }

    @Test("a call to a restarting owner waits for it to come back")
    func waitsForRestart() async throws {
        let hub = Hub(logger: quietLogger)
        try hub.register(jobs: ["state.get"], for: .inProcess("state") { _ in "v1" })
        hub.withdraw(owner: "state", reason: "restarting", expectBackWithin: .seconds(30))
        #expect(hub.endpoints.first?.restarting == true)
        let waiting = Task { try await hub.call("state.get", timeout: .seconds(30)) }
        // Another plugin cannot take the name meanwhile.
        #expect(throws: RoutingError.self) { try hub.register(jobs: ["state.get"], for: echo("squatter")) }
        try hub.register(jobs: ["state.get"], for: .inProcess("state") { _ in "v2" })
        #expect(try await withDeadline { try await waiting.value } == "v2")
    }

    @Test("a restarting owner that does not come back in time fails the waiting call")
    func restartBound() async throws {
        let hub = Hub(logger: quietLogger)
        try hub.register(jobs: ["state.get"], for: echo("state"))
        hub.withdraw(owner: "state", reason: "restarting", expectBackWithin: .milliseconds(200))
        try await withDeadline {
            await #expect {
                try await hub.call("state.get", timeout: .seconds(30))
            } throws: { error in
                let e = error as? RoutingError
                return e?.code == .ownerGone && e?.reason.contains("did not come back") == true
            }
        }
    }

    @Test("a handler's own error reaches the caller")
    func handlerError() async throws {
        let hub = Hub(logger: quietLogger)
        struct Broken: Error {}
        try hub.register(jobs: ["broken"], for: .inProcess("b") { _ in throw Broken() })
        await #expect { try await hub.call("broken") } throws: { ($0 as? RoutingError)?.code == .handlerFailed }
    }
}

@Suite("hub with a real subprocess participant", .serialized)
struct HubSubprocessTests {
    @Test("calls reach a subprocess, its errors come back, a timeout leaves it serving")
    func subprocessJobs() async throws {
        let hub = Hub(logger: quietLogger)
        let (participant, peer) = try await PeerProcess.participant("sub")
        try hub.register(jobs: ["echo", "whoami", "fail", "hang"], for: participant)
        try await withDeadline(60) { () async throws in
            #expect(try await hub.call("echo", ["deep": [1, 2, 3]]) == ["deep": [1, 2, 3]])
            #expect(try await hub.call("whoami") == "sub")
            await #expect { try await hub.call("fail") } throws: { error in
                let e = error as? RoutingError
                return e?.code == .handlerFailed && e?.handlerCode == "job.failed"
            }
            await #expect { try await hub.call("hang", timeout: .milliseconds(200)) } throws: { ($0 as? RoutingError)?.code == .timeout }
            #expect(try await hub.call("echo", "still here") == "still here")
            #expect(hub.endpoints.first { $0.name == "echo" }?.remote == true)
        }
        await peer.stop()
    }

    @Test("a byte stream from a client's session reaches a subprocess job through the hub")
    func streamArgument() async throws {
        let hub = Hub(logger: quietLogger)
        let (participant, peer) = try await PeerProcess.participant("counter")
        try hub.register(jobs: ["count-bytes"], for: participant)
        // A client (think: the admin CLI) and the daemon, joined by their own session.
        let (client, daemon) = Session.inMemoryPair(.init(name: "cli"), .init(name: "daemon"), logger: quietLogger)
        async let clientStarted = client.start()
        async let daemonStarted = daemon.start()
        _ = try await (clientStarted, daemonStarted)
        let size = 3 * 1024 * 1024 + 17
        let answer = try await withDeadline(60) { () async throws -> Value in
            let control = try client.open()
            let (writer, reader) = try client.makeByteStream()
            try await control.send(.fields(("stream", .channel(.byteStreamReader(reader)))))
            let inbox = try #require(try await daemon.accept())
            let argument = try #require(try await inbox.receive())
            async let result = hub.call("count-bytes", argument, timeout: .seconds(60))
            try await writer.write([UInt8](repeating: 9, count: size))
            writer.close()
            return try await result
        }
        #expect(answer == .int(Int64(size)))
        await peer.stop()
    }

    @Test("a subprocess that dies fails its in-flight calls at once")
    func subprocessDeath() async throws {
        let hub = Hub(logger: quietLogger)
        let (participant, peer) = try await PeerProcess.participant("mortal")
        try hub.register(jobs: ["hang", "crash"], for: participant)
        let hanging = (0..<3).map { _ in Task { try await hub.call("hang", timeout: .seconds(120)) } }
        // Whether a hanging call was already sent or is sent after the crash, it must end
        // with ownerGone, not hang.
        await #expect { try await hub.call("crash", timeout: .seconds(120)) } throws: { ($0 as? RoutingError)?.code == .ownerGone }
        try await withDeadline(20, "in-flight calls to fail") {
            for call in hanging {
                await #expect { try await call.value } throws: { ($0 as? RoutingError)?.code == .ownerGone }
            }
        }
        #expect(await peer.process.waitForExit() == .exited(7))
    }
}
