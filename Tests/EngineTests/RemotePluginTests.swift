#if canImport(Glibc)
import Glibc
#endif
import Chan
import Engine
import Foundation
import Remote
import Routing
import Spawn
import Testing
import TestSupport

/// A PluginKit plugin (plugboard-test-plugin) started by the test, not by plugboardd: it
/// connects in through `PLUGBOARD_CONNECT`. Its stdout and stderr are read line by line.
struct RemotePluginProcess {
    let process: SpawnedProcess
    let log: LogLines

    /// Starts it with `options`, claiming `name`; `tls` is (cert, key, ca); `netns` runs it
    /// in that network namespace (`ip netns exec`).
    /// `command` runs another plugin than plugboard-test-plugin (the Python SDK's), with
    /// `environment` added.
    static func start(
        connect: String, name: String?, options: String, tls: (String, String, String)? = nil, netns: String? = nil,
        command: [String]? = nil, environment extra: [String: String] = [:]
    ) throws -> RemotePluginProcess {
        var environment = ["PLUGBOARD_CONNECT": connect, "PLUGBOARD_OPTIONS": options, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"]
        environment.merge(extra) { $1 }
        if let name { environment["PLUGBOARD_PLUGIN_NAME"] = name }
        if let (cert, key, ca) = tls {
            environment["PLUGBOARD_TLS_CERT"] = cert
            environment["PLUGBOARD_TLS_KEY"] = key
            environment["PLUGBOARD_TLS_CA"] = ca
        }
        let plugin = try command ?? [builtExecutable("plugboard-test-plugin")]
        let (executable, arguments) = netns.map { ("/usr/sbin/ip", ["netns", "exec", $0] + plugin) } ?? (plugin[0], Array(plugin.dropFirst()))
        let output = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: executable, arguments: arguments, environment: childEnvironment(environment),
            fileDescriptors: [1: output.writeEnd, 2: output.writeEnd]
        ))
        close(output.writeEnd)
        return RemotePluginProcess(process: process, log: LogLines(fd: output.readEnd))
    }

    /// SIGKILL and wait.
    func kill() async {
        process.signal(SIGKILL)
        _ = await process.waitForExit()
    }
}

/// Remote plugins on a unix socket: identity by peer credentials, registration like an exec
/// plugin, a dropped connection withdrawn at once, the plugin back when it reconnects.
@Suite("remote plugins over a unix socket", .serialized)
struct RemotePluginTests {
    let dir = "/tmp/plugboard-remote-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    /// An engine with remote plugin `far` (allowed: this uid) and a listener at DIR/p.sock.
    func engineWithListener(_ access: RemoteAccess = RemoteAccess(uids: [getuid()])) async throws -> (Engine, RemoteListener, Task<Void, Never>) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let engine = Engine(logger: quietLogger)
        try await engine.boot([PluginSpec(name: "far", kind: .remote(access), startTimeout: .seconds(60))])
        let listener = try await RemoteListener.bind(.unix(path: dir + "/p.sock"), tls: nil, maxFrameSize: Engine.maxFrameFromPlugins, logger: quietLogger)
        let serving = Task { await engine.servePlugins(on: listener) }
        return (engine, listener, serving)
    }

    func tearDown(_ engine: Engine, _ listener: RemoteListener, _ serving: Task<Void, Never>, _ plugins: [RemotePluginProcess]) async {
        for p in plugins { await p.kill() }
        await listener.close()
        await serving.value
        await engine.shutdown(grace: .milliseconds(200))
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test("a plugin started by someone else connects, registers jobs and hooks, serves; its drop fails in-flight calls at once and withdraws it; it comes back")
    func connectDropReconnect() async throws {
        let (engine, listener, serving) = try await engineWithListener()
        var plugins: [RemotePluginProcess] = []
        do {
            let events = engine.events()
            #expect(await engine.status().first { $0.name == "far" }?.state == .away)
            #expect(await engine.status().first { $0.name == "far" }?.kind == "remote")
            let first = try RemotePluginProcess.start(connect: "unix:" + dir + "/p.sock", name: "far", options: "provides=far.echo hook=container.create:1000")
            plugins.append(first)
            _ = try await waitForEvent(events, "far active") { $0.plugin == "far" && $0.state == .active }
            #expect(try await engine.hub.call("far.echo", .string("hi"), timeout: .seconds(5)) == .string("hi"))
            let status = await engine.status().first { $0.name == "far" }
            #expect(status?.peer?.contains("uid \(getuid())") == true, "\(String(describing: status?.peer))")
            #expect(engine.hooks.allRegistrations.contains { $0.owner == "far" && $0.event == "container.create" })

            // A call in flight when the plugin dies fails at once, naming the lost connection.
            let hanging = Task { try await engine.hub.call("far.hang", timeout: .seconds(120)) }
            try await waitUntil(10, "the call in flight") { engine.hub.inFlight.count(owner: "far") == 1 }
            await first.kill()
            try await withDeadline(10, "the in-flight call to fail") {
                await #expect { try await hanging.value } throws: { error in
                    let e = error as? RoutingError
                    return e?.code == .ownerGone && e?.reason.contains("far") == true
                }
            }
            _ = try await waitForEvent(events, "far away") { $0.plugin == "far" && $0.state == .away }
            #expect(!engine.hooks.allRegistrations.contains { $0.owner == "far" })

            // A call made while it is away waits for it; it reconnects (a new process) and answers.
            let waiting = Task { try await engine.hub.call("far.echo", .string("again"), timeout: .seconds(60)) }
            let second = try RemotePluginProcess.start(connect: "unix:" + dir + "/p.sock", name: "far", options: "provides=far.echo hook=container.create:1000")
            plugins.append(second)
            #expect(try await withDeadline(90, "the waiting call") { try await waiting.value } == .string("again"))
            #expect(engine.hooks.allRegistrations.contains { $0.owner == "far" && $0.event == "container.create" })
        } catch {
            await tearDown(engine, listener, serving, plugins)
            throw error
        }
        await tearDown(engine, listener, serving, plugins)
    }

    @Test("a name not configured, a uid not allowed, a second connection: each refused with the reason, which the plugin logs")
    func refusals() async throws {
        let (engine, listener, serving) = try await engineWithListener(RemoteAccess(uids: [getuid() &+ 4242], gids: [4242]))
        var plugins: [RemotePluginProcess] = []
        do {
            let stranger = try RemotePluginProcess.start(connect: "unix:" + dir + "/p.sock", name: "stranger", options: "provides=stranger.x")
            plugins.append(stranger)
            let said = try await withDeadline(20, "the stranger's refusal") { await stranger.log.waitFor("refused") }
            #expect(said?.contains("no remote plugin named stranger is configured") == true, "\(stranger.log.all)")

            let wrongUID = try RemotePluginProcess.start(connect: "unix:" + dir + "/p.sock", name: "far", options: "provides=far.x")
            plugins.append(wrongUID)
            let refused = try await withDeadline(20, "the uid's refusal") { await wrongUID.log.waitFor("refused") }
            #expect(refused?.contains("uid \(getuid()) gid \(getgid()) may not connect as plugin far") == true, "\(wrongUID.log.all)")
            #expect(await engine.status().first { $0.name == "far" }?.state == .away)
            #expect(engine.hub.endpoints.first { $0.name == "far.x" } == nil)
        } catch {
            await tearDown(engine, listener, serving, plugins)
            throw error
        }
        await tearDown(engine, listener, serving, plugins)
    }

    @Test("while one connection is the plugin, a second one claiming it is refused")
    func secondConnectionRefused() async throws {
        let (engine, listener, serving) = try await engineWithListener()
        var plugins: [RemotePluginProcess] = []
        do {
            let events = engine.events()
            let first = try RemotePluginProcess.start(connect: "unix:" + dir + "/p.sock", name: "far", options: "provides=far.echo")
            plugins.append(first)
            _ = try await waitForEvent(events, "far active") { $0.plugin == "far" && $0.state == .active }
            let second = try RemotePluginProcess.start(connect: "unix:" + dir + "/p.sock", name: "far", options: "provides=far.echo")
            plugins.append(second)
            let refused = try await withDeadline(20, "the second's refusal") { await second.log.waitFor("refused") }
            #expect(refused?.contains("plugin far is already connected from") == true, "\(second.log.all)")
            #expect(try await engine.hub.call("far.echo", .string("still"), timeout: .seconds(5)) == .string("still"))
        } catch {
            await tearDown(engine, listener, serving, plugins)
            throw error
        }
        await tearDown(engine, listener, serving, plugins)
    }

    @Test("plugboardd --plugin-listen unix: --plugin-remote: plugin ls shows kind remote with its peer, the CLI calls it, a refusal is logged on both sides")
    func daemonUnixListener() async throws {
        let place = DaemonPlace("remote-daemon")
        let socket = place.dir + "-plugins.sock"
        let daemon = try await place.startDaemon([
            "--plugin-listen", "unix:" + socket, "--plugin-remote", "far uid=\(getuid())", "--plugin-remote", "locked uid=\(getuid() &+ 4242)",
        ])
        var plugins: [RemotePluginProcess] = []
        do {
            let before = try await place.cli(["plugin", "ls"])
            #expect(before.out.contains("far") && before.out.contains("remote") && before.out.contains("away") && before.out.contains("PEER"), "\(before.out)")
            let far = try RemotePluginProcess.start(connect: "unix:" + socket, name: "far", options: "provides=far.echo")
            plugins.append(far)
            _ = try await withDeadline(20, "far connected") { await daemon.log.waitFor("remote plugin connected") }
            let call = try await place.cli(["call", "far.echo", "{\"x\": 1}"])
            #expect(call.status == .exited(0) && call.out.contains("\"x\""), "\(call)")
            let ls = try await place.cli(["plugin", "ls", "--format", "json"])
            let rows = try JSONSerialization.jsonObject(with: Data(ls.out.utf8)) as? [[String: Any]] ?? []
            let row = rows.first { $0["name"] as? String == "far" }
            #expect(row?["kind"] as? String == "remote" && row?["state"] as? String == "active", "\(ls.out)")
            #expect((row?["peer"] as? String)?.contains("unix:\(socket)") == true, "\(ls.out)")
            #expect(row?["uptime_s"] is Double || row?["uptime_s"] is Int, "\(ls.out)")

            let locked = try RemotePluginProcess.start(connect: "unix:" + socket, name: "locked", options: "provides=locked.x")
            plugins.append(locked)
            let pluginSide = try await withDeadline(20, "the refusal on the plugin's side") { await locked.log.waitFor("refused") }
            #expect(pluginSide?.contains("may not connect as plugin locked") == true, "\(locked.log.all)")
            let daemonSide = try await withDeadline(20, "the refusal in the daemon's log") { await daemon.log.waitFor("remote plugin refused") }
            #expect(daemonSide?.contains("locked") == true, "\(String(describing: daemonSide))")
        } catch {
            for p in plugins { await p.kill() }
            await place.stop(daemon)
            throw error
        }
        for p in plugins { await p.kill() }
        await place.stop(daemon)
        try? FileManager.default.removeItem(atPath: socket)
    }
}
