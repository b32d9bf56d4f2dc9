#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

@Suite("the admin socket and the plugboard CLI, end to end", .serialized)
struct AdminTests {
    let place = DaemonPlace("admin-test")
    var dir: String { place.dir }
    var socket: String { place.socket }


    @Test("plugin ls, call, endpoints and hooks answer over the socket; a failed call exits non-zero")
    func queries() async throws {
        let daemon = try await place.startDaemon(["--plugin", "host-mount", "/data /var/data"])
        let ls = try await place.cli(["plugin", "ls", "--format", "json"])
        #expect(ls.status == .exited(0), "\(ls.err)")
        let rows = try JSONSerialization.jsonObject(with: Data(ls.out.utf8)) as? [[String: Any]]
        #expect(rows?.map { $0["name"] as? String } == ["events", "metrics", "state", "echo", "host-mount"])
        #expect(rows?.first?["kind"] as? String == "builtin")
        #expect(rows?.first?["state"] as? String == "active")
        #expect(rows?.first?.keys.contains("pid") == true && rows?.first?.keys.contains("restarts") == true)
        let table = try await place.cli(["plugin", "ls"])
        #expect(table.out.hasPrefix("NAME"))
        let call = try await place.cli(["call", "echo", #"{"hello": "world"}"#])
        #expect(call.status == .exited(0))
        #expect(call.out.contains(#""hello" : "world""#))
        let bad = try await place.cli(["call", "nope"])
        #expect(bad.status != .exited(0))
        #expect(bad.err.contains("no job named nope"))
        #expect(try await place.cli(["endpoints"]).out.contains("echo"))
        #expect(try await place.cli(["hooks"]).out.contains("container.create"))
        #expect(try await place.cli(["plugin", "set", "host-mount", "priority:container.create=99", "timeout:container.create=5s"]).status == .exited(0))
        let hooks = try await place.cli(["hooks", "--format", "json"])
        #expect(hooks.out.contains(#""priority" : 99"#) && hooks.out.contains(#""timeout" : "5s""#) && hooks.out.contains(#""timeout_ms" : 5000"#), "\(hooks.out)")
        let noHook = try await place.cli(["plugin", "set", "host-mount", "priority:container.start=1"])
        #expect(noHook.err.contains("has no hook for container.start"))
        await place.stop(daemon)
    }

    @Test("add, disable, enable, restart and remove a plugin on the running daemon")
    func lifecycle() async throws {
        let daemon = try await place.startDaemon()
        let plugin = try builtExecutable("plugboard-test-plugin")
        #expect(try await place.cli(["plugin", "add", "base", "--exec", "\(plugin) provides=base.job"]).status == .exited(0))
        #expect(try await place.cli(["plugin", "add", "user", "--exec", "\(plugin) requires=base.job"]).status == .exited(0))
        #expect(try await place.cli(["call", "base.job", "7"]).out.contains("7"))
        let refused = try await place.cli(["plugin", "disable", "base"])
        #expect(refused.status != .exited(0))
        #expect(refused.err.contains("required by user"))
        #expect(try await place.cli(["plugin", "disable", "user"]).status == .exited(0))
        #expect(try await place.cli(["plugin", "ls"]).out.contains("disabled"))
        #expect(try await place.cli(["plugin", "enable", "user"]).status == .exited(0))
        #expect(try await place.cli(["plugin", "restart", "base"]).status == .exited(0))
        let inspect = try await place.cli(["plugin", "inspect", "base"])
        #expect(inspect.out.contains(#""restarts" : 1"#), "\(inspect.out)")
        #expect(try await place.cli(["plugin", "set", "base", "restart-policy=always", "backoff-max=30s"]).status == .exited(0))
        #expect(try await place.cli(["plugin", "inspect", "base"]).out.contains(#""restart_policy" : "always""#))
        let badSet = try await place.cli(["plugin", "set", "base", "colour=blue"])
        #expect(badSet.status != .exited(0) && badSet.err.contains("cannot be set at run time"))
        #expect(try await place.cli(["plugin", "ls"]).out.contains("UPTIME"))
        #expect(try await place.cli(["plugin", "rm", "base", "--force"]).status == .exited(0))
        #expect(!(try await place.cli(["plugin", "ls"]).out.contains("base")))
        let unknown = try await place.cli(["plugin", "inspect", "ghost"])
        #expect(unknown.err.contains("no plugin named ghost"))
        await place.stop(daemon)
    }

    @Test("events follows the daemon as plugins change, one JSON object per line")
    func events() async throws {
        let daemon = try await place.startDaemon()
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        let follower = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboard"), arguments: ["events", "--format", "json", "--filter", "plugin=watched", "--socket", socket],
            environment: childEnvironment(["PATH": "/usr/bin:/bin"]), fileDescriptors: [1: out.writeEnd, 2: err.writeEnd]
        ))
        close(out.writeEnd)
        close(err.writeEnd)
        let lines = LogLines(fd: out.readEnd)
        let notices = LogLines(fd: err.readEnd)
        // Wait until the follower is subscribed: it says so once the daemon has answered.
        let following = try await withDeadline(30, "the follower to subscribe") { await notices.waitFor("following events") }
        #expect(following != nil)
        _ = try await place.cli(["plugin", "add", "watched", "--exec", try builtExecutable("plugboard-test-plugin")])
        let line = try await withDeadline(30, "the plugin's event") { await lines.waitFor(#""state":"active""#) }
        #expect(line?.contains(#""plugin":"watched""#) == true)
        follower.signal(SIGTERM)
        _ = await follower.waitForExit()
        await place.stop(daemon)
    }

    @Test("the socket is 0600 in a 0700 directory; a second daemon is refused; a stale socket is replaced")
    func socketRules() async throws {
        let daemon = try await place.startDaemon()
        var info = stat()
        #expect(stat(socket, &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(stat(dir, &info) == 0 && info.st_mode & 0o777 == 0o700)
        let second = try await runCommand(try builtExecutable("plugboardd"), ["--plugin", "echo", "--admin-socket", socket, "--state-dir", dir + "-second-state"])
        try? FileManager.default.removeItem(atPath: dir + "-second-state")
        #expect(second.status != .exited(0))
        #expect(second.err.contains("another plugboardd is serving \(socket)"))
        // SIGKILL leaves the socket file behind: the next daemon must replace it.
        daemon.process.signal(SIGKILL)
        _ = await daemon.process.waitForExit()
        #expect(access(socket, F_OK) == 0, "the dead daemon's socket file is still there")
        let next = try await place.startDaemon()
        #expect(try await place.cli(["call", "echo", "1"]).status == .exited(0))
        await place.stop(next)
    }

    @Test("a second daemon on the same state directory exits at once, naming the first one's pid and socket, and harms nothing")
    func stateDirectoryLocked() async throws {
        let daemon = try await place.startDaemon()
        let otherSocket = dir + "-other/admin.sock"
        let second = try await runCommand(try builtExecutable("plugboardd"), ["--plugin", "echo", "--admin-socket", otherSocket, "--state-dir", dir + "-state"])
        #expect(second.status != .exited(0))
        #expect(second.err.contains("another plugboardd (pid \(daemon.process.pid), admin socket \(socket)) is using the state directory \(dir)-state"), "\(second.err)")
        #expect(access(otherSocket, F_OK) != 0, "the refused daemon made its socket")
        // The first daemon is untouched and serves on.
        #expect(try await place.cli(["call", "echo", "1"]).status == .exited(0))
        await place.stop(daemon)
        try? FileManager.default.removeItem(atPath: dir + "-other")
        // Once the first is gone, the directory is free again.
        let next = try await place.startDaemon()
        #expect(try await place.cli(["call", "echo", "2"]).status == .exited(0))
        await place.stop(next)
    }

    @Test("a client running as another uid is refused, even when the socket file is world-writable")
    func otherUidRefused() async throws {
        guard getuid() == 0 else {
            Issue.record("this test needs root, to run the client as another uid (setpriv); CI runs as root")
            return
        }
        let daemon = try await place.startDaemon()
        chmod(dir, 0o755)
        chmod(socket, 0o666)
        let cliPath = try builtExecutable("plugboard")
        // The build folder may not be reachable by nobody: copy the CLI somewhere that is.
        let copy = "/tmp/plugboard-cli-\(getpid())"
        _ = try await runCommand("/bin/cp", [cliPath, copy])
        chmod(copy, 0o755)
        defer { unlink(copy) }
        let result = try await runCommand("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", copy, "plugin", "ls", "--socket", socket])
        #expect(result.status != .exited(0))
        #expect(result.err.contains("refused"), "stderr: \(result.err)")
        let logged = try await withDeadline(10) { await daemon.log.waitFor("admin connection refused") }
        #expect(logged?.contains("uid 65534") == true)
        await place.stop(daemon)
    }
}
