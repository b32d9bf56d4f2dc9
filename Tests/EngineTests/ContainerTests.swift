#if canImport(Glibc)
import Glibc
#endif
import Chan
import Containers
import ContainersPlugin
import Foundation
import HostMountPlugin
import PluginKit
import Spawn
import Testing
import TestSupport
@testable import Engine

/// What every container test needs: root, runc, busybox-static. Missing any, the test
/// fails and says what to install — it does not pass quietly.
func requireContainerHost() throws {
    try #require(getuid() == 0, "container tests need root (runc runs containers as root here); run make test as root, as CI does")
    try #require(access("/usr/sbin/runc", X_OK) == 0 || access("/usr/bin/runc", X_OK) == 0, "runc is not installed: make deps installs Debian's runc")
    try #require(access("/bin/busybox", X_OK) == 0, "busybox-static is not installed: make deps installs it")
}

/// A fresh directory for one test: runc root, bundles, rootfs.
func containerTestDirectory(_ what: String) throws -> String {
    let dir = "/tmp/plugboard-\(what)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// A busybox root file system: /bin/busybox from Debian's busybox-static and its applets.
func busyboxRootfs(in dir: String) throws -> String {
    let rootfs = dir + "/rootfs"
    try FileManager.default.createDirectory(atPath: rootfs + "/bin", withIntermediateDirectories: true)
    for d in ["proc", "sys", "dev", "tmp", "mnt"] { try FileManager.default.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true) }
    try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
    for applet in ["sh", "cat", "echo", "ls", "hostname", "sleep"] {
        try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
    }
    return rootfs
}

/// The shipped label plugin's bundle, built by plugins/label/build-bundle.sh (once per test run).
func labelBundle() async throws -> String {
    try await LabelBundle.shared.path()
}

actor LabelBundle {
    static let shared = LabelBundle()
    private var built: String?

    func path() async throws -> String {
        if let built { return built }
        let out = "/tmp/plugboard-label-bundle-\(getpid())"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("plugins/label/build-bundle.sh").path
        let r = try await runCommand("/bin/sh", [script, try builtExecutable("plugboard-plugin-label"), out])
        try #require(r.status == .exited(0), "build-bundle.sh failed: \(r.err)")
        built = out
        return out
    }
}

func runtime(_ dir: String) throws -> ContainerRuntime {
    try ContainerRuntime(stateDirectory: dir, shim: Engine.defaultShimPath())
}

func containersPlugin(_ engine: Engine, _ runtime: ContainerRuntime) -> PluginSpec {
    PluginSpec(name: "containers", kind: .builtin(ContainersPlugin(runc: runtime.runc, bundles: runtime.bundles + "/containers", logger: quietLogger)))
}

/// Runs a container through the jobs, as `plugboard container run` does, and returns its output and exit code.
func runContainer(_ engine: Engine, _ spec: Value) async throws -> (output: String, exitCode: Int64?, id: String) {
    let created = try await engine.hub.call("container.create", spec)
    let id = try #require(created["id"]?.stringValue)
    _ = try await engine.hub.call("container.start", .fields(("id", .string(id))))
    let waited = try await engine.hub.call("container.wait", .fields(("id", .string(id)), ("timeout_ms", 30_000)), timeout: .seconds(40))
    let logs = try await engine.hub.call("container.logs", .fields(("id", .string(id))))
    let output = (logs["chunks"]?.arrayValue ?? []).filter { $0["stream"] == "stdout" }.flatMap { $0["data"]?.binaryValue ?? [] }
    return (String(decoding: output, as: UTF8.self), waited["exit_code"]?.intValue, id)
}

/// The error container.create gives for `spec`, as text ("no error" if it succeeds).
func createError(_ engine: Engine, _ spec: Value) async -> String {
    do {
        _ = try await engine.hub.call("container.create", spec)
        return "no error"
    } catch {
        return "\(error)"
    }
}

@Suite("containers: container plugins and the container lifecycle, with real runc", .serialized)
struct ContainerTests {
    @Test("bad specs, conflicting hooks and a hook that breaks the spec get errors that say what and who")
    func createErrors() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("errors")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rt = try runtime(dir)
        let engine = Engine(logger: quietLogger, containers: rt)
        struct Labeller: Plugin {
            let name: String
            let value: Value
            func declare(_ context: PluginContext) -> PluginDeclaration {
                var d = PluginDeclaration(name: name)
                let value = self.value
                d.hook("container.create", priority: name == "first" ? 20 : 10) { payload, _ in
                    guard case .map(var entries) = payload else { return .veto("not a map") }
                    entries.removeAll { $0.key == "labels" }
                    entries.append((key: "labels", value: .fields(("team", value))))
                    return .continue(.map(entries))
                }
                return d
            }
        }
        let rootfs = try busyboxRootfs(in: dir)
        try await engine.boot([containersPlugin(engine, rt)])
        func failure(_ spec: Value) async -> String { await createError(engine, spec) }
        #expect(await failure(.fields(("rootfs", "relative/dir"), ("args", ["true"]))).contains("\"rootfs\" must be an absolute path"))
        #expect(await failure(.fields(("rootfs", .string(rootfs)), ("args", .array([])))).contains("\"args\" is empty"))
        #expect(await failure(.fields(("rootfs", .string(dir + "/missing")), ("args", ["true"]))).contains("is not a directory"))
        #expect(await failure(.fields(("rootfs", .string(rootfs)), ("args", ["true"]), ("name", "bad name!"))).contains("may hold only"))
        _ = try await engine.hub.call("container.create", .fields(("rootfs", .string(rootfs)), ("args", ["true"]), ("name", "once")))
        #expect(await failure(.fields(("rootfs", .string(rootfs)), ("args", ["true"]), ("name", "once"))).contains("already exists"))

        // Two plugins setting the same label: a conflict naming both and the field.
        _ = try await engine.add(PluginSpec(name: "first", kind: .builtin(Labeller(name: "first", value: "a"))))
        _ = try await engine.add(PluginSpec(name: "second", kind: .builtin(Labeller(name: "second", value: "b"))))
        let conflict = await failure(.fields(("rootfs", .string(rootfs)), ("args", ["true"])))
        #expect(conflict.contains("first") && conflict.contains("second") && conflict.contains("labels.team"), "\(conflict)")
        try await engine.remove("second")
        try await engine.remove("first")
        // A hook whose output is not a valid spec is named.
        _ = try await engine.add(PluginSpec(name: "breaker", kind: .builtin(Labeller(name: "breaker", value: .int(3)))))
        let broken = await failure(.fields(("rootfs", .string(rootfs)), ("args", ["true"])))
        #expect(broken.contains("after the container.create hooks") && broken.contains("breaker"), "\(broken)")
        #expect(try await engine.hub.call("container.ls", .nil).arrayValue?.count == 1, "only the good one was created")
        await engine.shutdown(grace: .seconds(2))
    }

    @Test("host-mount: a file written on the host is read from inside a container")
    func hostMountVisible() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("hostmount")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let hostDir = dir + "/shared"
        try FileManager.default.createDirectory(atPath: hostDir, withIntermediateDirectories: true)
        let secret = "written on the host \(UInt64.random(in: 0...UInt64.max))"
        try secret.write(toFile: hostDir + "/note.txt", atomically: true, encoding: .utf8)
        let rt = try runtime(dir)
        let engine = Engine(logger: quietLogger, containers: rt)
        try await engine.boot([containersPlugin(engine, rt), PluginSpec(name: "host-mount", kind: .builtin(HostMountPlugin()), options: "\(hostDir) /mnt/host")])
        let lifecycle = engine.bus.subscribe(EventFilter(types: ["container.*", "hook.outcome"]))
        let (output, code, id) = try await runContainer(engine, .fields(
            ("rootfs", .string(try busyboxRootfs(in: dir))), ("args", ["cat", "/mnt/host/note.txt"])
        ))
        #expect(output == secret)
        #expect(code == 0)
        // The events service sees the container's life: the create chain, start, exit.
        let seen = try await withDeadline(30, "the container's events") { () -> [Value] in
            var seen: [Value] = []
            while !seen.contains(where: { $0["type"] == "container.exited" }), let record = await lifecycle.next() {
                if case .event(let e) = record { seen.append(e) }
            }
            return seen
        }
        #expect(seen.contains { $0["type"] == "hook.outcome" && $0["event"] == "container.create" && $0["result"] == "ok" })
        #expect(seen.contains { $0["type"] == "container.started" && $0["id"]?.stringValue == id })
        #expect(seen.contains { $0["type"] == "container.exited" && $0["id"]?.stringValue == id && $0["exit_code"] == 0 })
        lifecycle.cancel()
        let inspected = try await engine.hub.call("container.inspect", .fields(("id", .string(id))))
        #expect(inspected["changed_by"]?["mounts[0]"] == "host-mount")
        await engine.shutdown(grace: .seconds(2))
        #expect(try await rt.runc.list() == [])
    }

    @Test("the shipped label container plugin's hook changes a created container, from inside its own container")
    func containerPluginHook() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("label")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rt = try runtime(dir)
        let engine = Engine(logger: quietLogger, containers: rt)
        try await engine.boot([containersPlugin(engine, rt), PluginSpec(name: "label", kind: .container(bundle: try await labelBundle()))])
        // It runs in Plugboard's own runc root, not the user's.
        #expect(try await rt.runc.list() == ["plugin-label"])
        let users = try await runCommand(rt.runc.executable, ["list", "--quiet"])
        #expect(!users.out.contains("plugin-label"))

        let created = try await engine.hub.call("container.create", .fields(
            ("name", "web"), ("rootfs", .string(try busyboxRootfs(in: dir))), ("args", ["true"])
        ))
        let inspected = try await engine.hub.call("container.inspect", .fields(("id", "web")))
        // The value is the host name the hook saw: its container's ("label"), not this machine's.
        #expect(inspected["spec"]?["labels"]?["io.plugboard.labelled-by"] == "label")
        #expect(inspected["changed_by"]?["labels.io.plugboard.labelled-by"] == "label")
        #expect(created["attribution"]?["labels.io.plugboard.labelled-by"] == "label")
        let config = try String(contentsOfFile: rt.bundles + "/containers/\(created["id"]?.stringValue ?? "")/config.json", encoding: .utf8)
        #expect(config.contains("\"io.plugboard.labelled-by\" : \"label\""))
        await engine.shutdown(grace: .seconds(2))
        #expect(try await rt.runc.list() == [])
    }

    @Test("kill -9 of a container plugin's process: it is restarted and no stray runc container is left")
    func killContainerPlugin() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("kill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rt = try runtime(dir)
        let engine = Engine(logger: quietLogger, containers: rt)
        let events = engine.events()
        try await engine.boot([PluginSpec(name: "label", kind: .container(bundle: try await labelBundle()), backoff: Backoff(initial: .milliseconds(20), jitter: 0))])
        let pid = try #require(await rt.runc.pid("plugin-label"), "the plugin's container has a pid")
        #expect(kill(pid, SIGKILL) == 0)
        let restarting = try await waitForEvent(events, "the plugin restarting") { $0.state == .restarting }
        #expect(restarting.detail.contains("killed by signal 9") || restarting.detail.contains("137"), "\(restarting.detail)")
        _ = try await waitForEvent(events, "the plugin active again") { $0.state == .active && $0.restarts == 1 }
        #expect(try await rt.runc.list() == ["plugin-label"], "exactly the new container")
        let newPid = await rt.runc.pid("plugin-label")
        #expect(newPid != nil && newPid != pid)
        #expect(ProcessWatch.waitUntilGone(pid, timeout: .seconds(5)))
        // It serves again: its hook is registered.
        #expect(engine.hooks.allRegistrations.contains { $0.owner == "label" && $0.event == "container.create" })
        await engine.shutdown(grace: .seconds(2))
        #expect(try await rt.runc.list() == [], "nothing left after the stop")
    }

    @Test("a container plugin asking for ungranted privileges is refused with the list; granted, it runs")
    func ungrantedRefused() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("grants")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bundle = dir + "/bundle"
        try FileManager.default.createDirectory(atPath: bundle, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: bundle + "/rootfs", withDestinationPath: try await labelBundle() + "/rootfs")
        try #"""
        {"entrypoint": ["/plugin/plugboard-plugin-label"],
         "privileges": {"network": "host", "mounts": [{"source": "/var/log", "destination": "/host/log", "readonly": true}], "capabilities": ["NET_ADMIN"]}}
        """#.write(toFile: bundle + "/plugin.json", atomically: true, encoding: .utf8)
        let rt = try runtime(dir)

        let refusing = Engine(logger: quietLogger, containers: rt)
        do {
            try await refusing.boot([PluginSpec(name: "netmon", kind: .container(bundle: bundle))])
            Issue.record("an ungranted plugin booted")
        } catch let error as EngineError {
            #expect(error.code == .permissionDenied)
            for p in ["network=host", "mount=/var/log:/host/log:ro", "capability=CAP_NET_ADMIN", "--grant-all-permissions"] {
                #expect(error.reason.contains(p), "\(error.reason)")
            }
        }
        #expect(try await rt.runc.list() == [], "nothing was started")
        // Some granted is not enough.
        let partly = Engine(logger: quietLogger, containers: rt)
        await #expect(throws: EngineError.self) {
            try await partly.boot([PluginSpec(name: "netmon", kind: .container(bundle: bundle), privileges: [.hostNetwork])])
        }

        let granted = Engine(logger: quietLogger, containers: rt)
        try await granted.boot([PluginSpec(name: "netmon", kind: .container(bundle: bundle), grantAllPrivileges: true)])
        #expect(await granted.status().first?.state == .active)
        let config = try String(contentsOfFile: rt.bundles + "/plugins/netmon/config.json", encoding: .utf8)
        #expect(!config.contains("\"network\""), "host network: no network namespace")
        #expect(config.contains("CAP_NET_ADMIN") && config.contains("/host/log"))
        await granted.shutdown(grace: .seconds(2))
        #expect(try await rt.runc.list() == [])
    }

    @Test("plugboard container run passes stdout, stderr and the exit code through; a daemon SIGTERM leaves no container")
    func containerRunCLI() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("run")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/admin.sock"
        let rootfs = try busyboxRootfs(in: dir)
        let daemon = try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", ["--plugin", "containers"])
        let plugboard = try builtExecutable("plugboard")
        try await whileRunning(daemon) {
            let r = try await runCommand(plugboard, [
                "container", "run", "--socket", socket, "--rootfs", rootfs, "--name", "hello", "-e", "GREETING=hi there",
                "--", "sh", "-c", "echo $GREETING; echo oops >&2; exit 7",
            ])
            #expect(r.out == "hi there\n")
            #expect(r.err == "oops\n")
            #expect(r.status == .exited(7))

            let ok = try await runCommand(plugboard, ["container", "run", "--socket", socket, "--rm", "--rootfs", rootfs, "--", "echo", "fine"])
            #expect(ok.out == "fine\n" && ok.status == .exited(0), "\(ok)")
            let ls = try await runCommand(plugboard, ["container", "ls", "--socket", socket])
            #expect(ls.out.contains("hello") && ls.out.contains("exited") && ls.out.contains(" 7 "), "\(ls.out)")
            #expect(ls.out.split(separator: "\n").count == 2, "--rm removed the second: \(ls.out)")

            // A long-running one, then SIGTERM: the daemon stops it and runc's list is empty.
            let started = try await runCommand(plugboard, ["container", "create", "--socket", socket, "--rootfs", rootfs, "--name", "sleeper", "--", "sleep", "600"])
            #expect(started.status == .exited(0), "\(started.err)")
            let start = try await runCommand(plugboard, ["container", "start", "--socket", socket, "sleeper"])
            #expect(start.status == .exited(0), "\(start.err)")
            let runc = try Runc.find(root: dir + "/state/runc", shim: nil)
            #expect(try await runc.list().count == 1)
        }
        let runc = try Runc.find(root: dir + "/state/runc", shim: nil)
        daemon.process.signal(SIGTERM)
        let status = try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
        #expect(try await runc.list() == [], "no container left after SIGTERM")
    }

    @Test("the containers plugin runs as a subprocess like any other: its create chain goes through the engine, and host-mount's hook changes the container")
    func containersAsSubprocess() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("subprocess")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let hostDir = dir + "/shared"
        try FileManager.default.createDirectory(atPath: hostDir, withIntermediateDirectories: true)
        try "from the host".write(toFile: hostDir + "/note.txt", atomically: true, encoding: .utf8)
        let socket = dir + "/admin.sock"
        let rootfs = try busyboxRootfs(in: dir)
        let daemon = try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", [
            "--plugin", "host-mount", "\(hostDir) /mnt/host",
            "--plugin-exec", "containers=\(try builtExecutable("plugboard-plugin-containers")) \(dir)/containers-state",
        ])
        let plugboard = try builtExecutable("plugboard")
        try await whileRunning(daemon) {
            let ls = try await runCommand(plugboard, ["plugin", "ls", "--socket", socket])
            #expect(ls.out.contains("containers") && ls.out.contains("exec"), "\(ls.out)")
            let r = try await runCommand(plugboard, ["container", "run", "--socket", socket, "--rootfs", rootfs, "--name", "sub", "--", "cat", "/mnt/host/note.txt"])
            #expect(r.out == "from the host" && r.status == .exited(0), "\(r)")
            let inspected = try await runCommand(plugboard, ["container", "inspect", "--socket", socket, "sub"])
            #expect(inspected.out.contains(#""mounts[0]" : "host-mount""#), "\(inspected.out)")
            _ = try await runCommand(plugboard, ["container", "rm", "--socket", socket, "sub"])
        }
        daemon.process.signal(SIGTERM)
        #expect(try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() } == .exited(0))
        #expect(try await Runc.find(root: dir + "/containers-state/runc", shim: nil).list() == [], "no container left")
    }

    @Test("a subprocess not granted hooks.run:container.create cannot run that chain")
    func hookChainNeedsGrant() async throws {
        let dir = "/tmp/plugboard-hookgrant-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/admin.sock"
        let daemon = try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", ["--plugin", "echo"])
        let plugboard = try builtExecutable("plugboard")
        try await whileRunning(daemon) {
            // Added at run time without --grant-all-permissions: it asked, but was not granted.
            let add = try await runCommand(plugboard, ["plugin", "add", "sneaky", "--socket", socket, "--exec", "\(try builtExecutable("plugboard-plugin-containers")) \(dir)/cs"])
            #expect(add.status == .exited(0), "\(add.err)")
            let rootfs = dir + "/rootfs"
            try FileManager.default.createDirectory(atPath: rootfs, withIntermediateDirectories: true)
            let create = try await runCommand(plugboard, ["call", "--socket", socket, "container.create", #"{"rootfs": "\#(rootfs)", "args": ["true"]}"#])
            #expect(create.status != .exited(0))
            #expect(create.err.contains("may not run the container.create hooks: it asked for it but was not granted it"), "\(create.err)")
        }
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
    }

    @Test("a container's output passes through the pipeline line by line: the shipped mask-secrets script, then a plugin of lower priority, before container logs")
    func logsThroughPipeline() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("logpipe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/admin.sock"
        let rootfs = try busyboxRootfs(in: dir)
        let sh = try builtExecutable("plugboard-sh")
        let daemon = try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", [
            "--plugin", "containers",
            "--plugin-exec", "mask=\(sh) \(repositoryRoot)/plugins/shell/mask-secrets.sh",
            "--plugin-exec", "tagger=\(try builtExecutable("plugboard-test-plugin")) pipeline=container.log:10",
            // Between the two, an optional step that always fails: skipped, the line goes on.
            "--plugin-exec", "broken=\(try builtExecutable("plugboard-test-plugin")) pipeline-fail=container.log:30",
            // The tagger turns a line saying "alert" into an alert message too; this one publishes it.
            "--plugin-exec", "pager=\(try builtExecutable("plugboard-test-plugin")) announce=alert",
        ])
        let plugboard = try builtExecutable("plugboard")
        try await whileRunning(daemon) {
            let session = try await Session.connect(unixSocketPath: socket, configuration: .init(name: "watcher"), logger: quietLogger)
            try await session.start()
            let (sink, events) = try session.makePipe()
            _ = try await session.open(label: "admin").request(.fields(("command", "events"), ("sink", .channel(.sender(sink))), ("types", ["test.announced"])), timeout: .seconds(10))
            let r = try await runCommand(plugboard, [
                "container", "run", "--socket", socket, "--rootfs", rootfs, "--name", "chatty",
                "--", "sh", "-c", "echo 'login user=bob password=hunter2'; echo 'all fine'; echo 'token=abc123 oops' >&2; echo 'alert: disk full'",
            ])
            // The alert the tagger returned started its own run, which reached the pager.
            let announced = try await withDeadline(30, "the alert's own run") { try await events.receive() }
            #expect(announced?["line"] == "alert: disk full", "\(String(describing: announced))")
            session.close(reason: "done")
            #expect(r.status == .exited(0), "\(r.err)")
            let logs = try await runCommand(plugboard, ["container", "logs", "--socket", socket, "chatty"])
            #expect(logs.out.contains("login user=bob password=****+tagger\n"), "\(logs.out)")
            #expect(logs.out.contains("all fine+tagger\n"), "\(logs.out)")
            #expect(logs.err.contains("token=**** oops+tagger"), "stderr lines pass too: \(logs.err)")
            #expect(!logs.out.contains("hunter2") && !logs.err.contains("abc123"))
            _ = try await runCommand(plugboard, ["container", "rm", "--socket", socket, "chatty"])
        }
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
    }

    @Test("a volume from the shipped local-volumes driver is visible in a container, by the best provider or by --volume-driver; it outlives the container")
    func volumes() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("volumes")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/admin.sock"
        let rootfs = try busyboxRootfs(in: dir)
        let daemon = try await Daemon.startReady(socket: socket, stateDirectory: dir + "/state", [
            "--plugin", "containers", "--plugin", "local-volumes", "\(dir)/volumes",
        ])
        let plugboard = try builtExecutable("plugboard")
        try await whileRunning(daemon) {
            let endpoints = try await runCommand(plugboard, ["endpoints", "--socket", socket])
            #expect(endpoints.out.contains("volume.driver") && endpoints.out.contains("local-volumes"), "\(endpoints.out)")
            let write = try await runCommand(plugboard, [
                "container", "run", "--rm", "--socket", socket, "--rootfs", rootfs, "-v", "data:/mnt/data",
                "--", "sh", "-c", "echo kept > /mnt/data/note.txt",
            ])
            #expect(write.status == .exited(0), "\(write.err)")
            #expect((try? String(contentsOfFile: dir + "/volumes/data/note.txt", encoding: .utf8)) == "kept\n", "the volume is a directory of the driver's")
            let read = try await runCommand(plugboard, [
                "container", "run", "--rm", "--socket", socket, "--rootfs", rootfs, "-v", "data:/data:ro", "--volume-driver", "local-volumes",
                "--", "sh", "-c", "cat /data/note.txt; touch /data/x 2>/dev/null || echo read-only",
            ])
            #expect(read.out == "kept\nread-only\n", "\(read.out) \(read.err)")
            let badDriver = try await runCommand(plugboard, [
                "container", "run", "--socket", socket, "--rootfs", rootfs, "-v", "data:/data", "--volume-driver", "nobody", "--", "true",
            ])
            #expect(badDriver.status != .exited(0) && badDriver.err.contains("plugin nobody does not provide volume.driver; its providers are local-volumes"), "\(badDriver.err)")
        }
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
    }
}
