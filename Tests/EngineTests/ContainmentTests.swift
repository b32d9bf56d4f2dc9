#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// Processes whose command line holds `marker` (descendants a plugin started).
func processes(holding marker: String) -> [pid_t] {
    let me = getpid()
    return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry -> pid_t? in
        guard let pid = pid_t(entry), pid != me, let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { return nil }
        let text = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        return text.contains(marker) ? pid : nil
    }
}

/// A shell command that leaves three descendants behind, each holding `marker`: one in a
/// new session (setsid), one double-forked (reparented away), one plain background job
/// that keeps the plugin's fds 3/4.
func escapingCommand(_ marker: String) -> String {
    "setsid sleep 4321.\(marker) & (sleep 4322.\(marker) &) ; sleep 4323.\(marker) &"
}

@Suite("containment: a plugin ends whole, names are checked, one process per plugin", .serialized)
struct ContainmentTests {
    let place = DaemonPlace("containment")

    func pluginExec(_ name: String, _ options: String = "") throws -> [String] {
        ["--plugin-exec", "\(name)=\(try builtExecutable("plugboard-test-plugin"))" + (options.isEmpty ? "" : " " + options)]
    }

    @Test("names that break the rules are refused where they enter, with the rule")
    func names() async throws {
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            let plugin = try builtExecutable("plugboard-test-plugin")
            for (bad, says) in [
                ("../../../../tmp/x", "must start with a letter or a digit"), ("a/../../x", "holds '/'"), ("", "cannot be empty"),
                ("two\nlines", "holds a newline"), (String(repeating: "n", count: 5000), "the limit is 64"), ("operator", "reserved for the engine"),
                ("state", "reserved"),
            ] {
                let r = try await place.cli(["plugin", "add", bad, "--exec", plugin])
                #expect(r.status != .exited(0), "\(bad.prefix(20)) was accepted")
                #expect(r.err.contains(says), "\(bad.prefix(20)): \(r.err)")
            }
            #expect(!FileManager.default.fileExists(atPath: "/tmp/x"))
            let ls = try await place.cli(["plugin", "ls", "--format", "json"])
            let rows = try JSONSerialization.jsonObject(with: Data(ls.out.utf8)) as? [[String: Any]]
            #expect(rows?.compactMap { $0["name"] as? String }.sorted() == ["echo", "events", "metrics", "state"])
            // A good name still goes in.
            #expect(try await place.cli(["plugin", "add", "good-name_1.x", "--exec", plugin]).status == .exited(0))
        }
        await place.stop(daemon)
        // On the daemon's command line the same rule stops it before it starts anything.
        let refused = try await Daemon.start(in: place.dir + "-cmdline", ["--plugin-exec", ".hidden=/bin/true"])
        #expect(await refused.process.waitForExit() != .exited(0))
        #expect(refused.log.all.joined(separator: "\n").contains("must start with a letter or a digit"), "\(refused.log.all.suffix(4))")
        try? FileManager.default.removeItem(atPath: place.dir + "-cmdline")
    }

    @Test("double-forked, setsid and fd-keeping descendants end with the plugin: at rm, at a restart, at SIGTERM")
    func descendantsEnd() async throws {
        let marker = String(UInt32.random(in: 100_000...999_999))
        let daemon = try await place.startDaemon(try pluginExec("leaky"))
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(place.socket)
            let events = try await pluginEvents(session, admin, plugin: "leaky")
            // A restart: the crash ends the plugin, and what it left goes before the next run.
            _ = try await adminCall(admin, "leaky.spawn", .fields(("command", .string(escapingCommand(marker + "1")))))
            #expect(processes(holding: marker + "1").count >= 3, "the descendants did not start")
            _ = try? await adminCall(admin, "leaky.crash", .nil)
            try await waitForActive(events, restarts: 1)
            #expect(processes(holding: marker + "1").isEmpty, "descendants outlived a restart: \(processes(holding: marker + "1"))")
            // plugin rm.
            _ = try await adminCall(admin, "leaky.spawn", .fields(("command", .string(escapingCommand(marker + "2")))))
            #expect(processes(holding: marker + "2").count >= 3)
            #expect(try await place.cli(["plugin", "rm", "leaky"]).status == .exited(0))
            #expect(processes(holding: marker + "2").isEmpty, "descendants outlived plugin rm: \(processes(holding: marker + "2"))")
            // SIGTERM of the daemon.
            #expect(try await place.cli(["plugin", "add", "leaky2", "--exec", try builtExecutable("plugboard-test-plugin")]).status == .exited(0))
            _ = try await adminCall(admin, "leaky2.spawn", .fields(("command", .string(escapingCommand(marker + "3")))))
            #expect(processes(holding: marker + "3").count >= 3)
            session.close(reason: "done")
        }
        await place.stop(daemon)
        #expect(processes(holding: marker + "3").isEmpty, "descendants outlived plugboardd's SIGTERM: \(processes(holding: marker + "3"))")
    }

    @Test("after plugboardd is SIGKILLed, the next start on its state directory ends what its plugins left, and says so")
    func predecessorsLeftovers() async throws {
        let marker = String(UInt32.random(in: 100_000...999_999))
        let first = try await place.startDaemon(try pluginExec("leaky"))
        try await whileRunning(first) {
            let (session, admin) = try await adminSession(place.socket)
            _ = try await adminCall(admin, "leaky.spawn", .fields(("command", .string(escapingCommand(marker)))))
            session.close(reason: "done")
        }
        #expect(processes(holding: marker).count >= 3)
        first.process.signal(SIGKILL)
        _ = await first.process.waitForExit()
        // The plugin itself dies with its parent (the shim's parent-death signal); its descendants do not.
        #expect(!processes(holding: marker).isEmpty, "nothing was left: the test proves nothing")
        let second = try await place.startDaemon()
        try await whileRunning(second) {
            let said = try await withDeadline(10, "the sweep's log line") { await second.log.waitFor("left behind") }
            #expect(said?.contains("leaky") == true, "\(said ?? "")")
            #expect(processes(holding: marker).isEmpty, "leftovers survived the next start: \(processes(holding: marker))")
        }
        await place.stop(second)
    }

    @Test("a removed plugin's state is set aside: a new plugin of its name starts empty, unless it adopts it")
    func stateBelongsToThePlugin() async throws {
        let daemon = try await place.startDaemon(try pluginExec("keeper"))
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(place.socket)
            func get(_ plugin: String) async throws -> Value {
                try await adminCall(admin, "\(plugin).call", .fields(("job", "state.get"), ("argument", .fields(("key", "secret")))))
            }
            _ = try await adminCall(admin, "keeper.call", .fields(("job", "state.put"), ("argument", .fields(("key", "secret"), ("value", "the old keeper's")))))
            #expect(try await get("keeper")["value"] == "the old keeper's")
            #expect(try await place.cli(["plugin", "rm", "keeper"]).status == .exited(0))
            let plugin = try builtExecutable("plugboard-test-plugin")
            #expect(try await place.cli(["plugin", "add", "keeper", "--exec", plugin]).status == .exited(0))
            #expect(try await get("keeper")["found"] == .bool(false), "a new plugin read the removed one's state")
            #expect(try await place.cli(["plugin", "rm", "keeper"]).status == .exited(0))
            // Asked for, it is taken over (the second keeper, which wrote nothing, did not
            // replace it); there is nothing left to adopt twice.
            let adopt = try await place.cli(["plugin", "add", "heir", "--exec", plugin, "--adopt-state", "keeper"])
            #expect(adopt.status == .exited(0), "\(adopt.err)")
            #expect(try await get("heir")["value"] == "the old keeper's")
            let again = try await place.cli(["plugin", "add", "heir2", "--exec", plugin, "--adopt-state", "keeper"])
            #expect(again.status != .exited(0) && again.err.contains("no removed plugin named keeper left any state"), "\(again.err)")
            #expect(try await place.cli(["plugin", "ls"]).out.contains("heir2") == false, "a failed add left the plugin behind")
            session.close(reason: "done")
        }
        await place.stop(daemon)
    }

    @Test("container bundles a killed plugboardd left are removed at the next start")
    func leftoverBundles() async throws {
        let state = place.dir + "-state"
        for id in ["c-1", "c-2", "c-3"] {
            try FileManager.default.createDirectory(atPath: "\(state)/bundles/containers/\(id)/rootfs", withIntermediateDirectories: true)
            try Data("{}".utf8).write(to: URL(fileURLWithPath: "\(state)/bundles/containers/\(id)/config.json"))
        }
        chmod(state, 0o700)
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            #expect(daemon.log.all.contains { $0.contains("removed container bundles left by an earlier plugboardd") && $0.contains("plugboard.count=3") }, "\(daemon.log.all.suffix(5))")
            #expect((try? FileManager.default.contentsOfDirectory(atPath: "\(state)/bundles/containers"))?.isEmpty == true)
        }
        await place.stop(daemon)
    }

    @Test("six concurrent restarts leave exactly one process; two concurrent adds of one name make one plugin")
    func serialised() async throws {
        let daemon = try await place.startDaemon(try pluginExec("one"))
        try await whileRunning(daemon) {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<6 { group.addTask { _ = try? await place.cli(["plugin", "restart", "one"]) } }
            }
            let inspect = try await place.cli(["plugin", "inspect", "one"])
            let info = try #require(try JSONSerialization.jsonObject(with: Data(inspect.out.utf8)) as? [String: Any], "\(inspect.out)")
            #expect(info["restarts"] as? Int == 6)
            #expect(info["state"] as? String == "active")
            let cgroup = try #require((info["resources"] as? [String: Any])?["cgroup"] as? String, "no cgroup: \(inspect.out)")
            let procs = try String(contentsOfFile: cgroup + "/cgroup.procs", encoding: .utf8).split(separator: "\n")
            #expect(procs.map(String.init) == [String(info["pid"] as? Int ?? -1)], "processes in the plugin's cgroup: \(procs)")
            // Two adds of one name at once: exactly one wins, and it works.
            let plugin = try builtExecutable("plugboard-test-plugin")
            let results = await withTaskGroup(of: Spawn.ExitStatus.self) { group -> [Spawn.ExitStatus] in
                for _ in 0..<2 {
                    group.addTask { (try? await place.cli(["plugin", "add", "twin", "--exec", plugin + " provides=twin.job"]))?.status ?? .exited(99) }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
            #expect(results.filter { $0 == .exited(0) }.count == 1, "\(results)")
            #expect(try await place.cli(["call", "twin.job", "\"hi\""]).out.contains("hi"))
        }
        await place.stop(daemon)
    }

    @Test("a plugin whose session died while its process lives is ended and restarted")
    func deadSession() async throws {
        let daemon = try await place.startDaemon(try pluginExec("mute"))
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(place.socket)
            let events = try await pluginEvents(session, admin, plugin: "mute")
            _ = try await adminCall(admin, "mute.close3", .nil)
            // The next call finds the session dead (its write fails), and the plugin is ended.
            _ = try? await adminCall(admin, "mute.restarts", .nil)
            try await waitForActive(events, restarts: 1)
            #expect(try await adminCall(admin, "mute.restarts", .nil) == .int(1))
            session.close(reason: "done")
        }
        await place.stop(daemon)
    }

    @Test("a restarted plugin whose declaration claims another's job ends failed, its process stopped")
    func restartConflict() async throws {
        let daemon = try await place.startDaemon(
            try pluginExec("owner", "provides=shared.job") + pluginExec("claimer", "provides-on-restart=shared.job")
        )
        try await whileRunning(daemon) {
            let (session, admin) = try await adminSession(place.socket)
            let events = try await pluginEvents(session, admin, plugin: "claimer")
            let pidBefore = try await pid(of: "claimer")
            _ = try? await adminCall(admin, "claimer.crash", .nil)
            let failed = try await withDeadline(30, "claimer failed") {
                while let e = try await events.receive() { if e["type"] == "plugin.failed" { return e } }
                throw DeadlineExceeded(what: "the event stream ended")
            }
            #expect(failed["detail"]?.stringValue?.contains("shared.job") == true, "\(failed)")
            let inspect = try await place.cli(["plugin", "inspect", "claimer"])
            #expect(inspect.out.contains("registration-conflict"), "\(inspect.out)")
            let info = try JSONSerialization.jsonObject(with: Data(inspect.out.utf8)) as? [String: Any]
            let cgroup = try #require((info?["resources"] as? [String: Any])?["cgroup"] as? String)
            #expect(try String(contentsOfFile: cgroup + "/cgroup.procs", encoding: .utf8).isEmpty, "the conflicting run's process lives on")
            #expect(pidBefore != nil)
            #expect(try await place.cli(["call", "shared.job", "\"still owner's\""]).out.contains("still owner's"))
            session.close(reason: "done")
        }
        await place.stop(daemon)
    }

    @Test("a memory limit is applied through the cgroup: the plugin over it is killed, restarted, and says why")
    func memoryLimit() async throws {
        let daemon = try await place.startDaemon(try pluginExec("hungry"))
        try await whileRunning(daemon) {
            #expect(try await place.cli(["plugin", "set", "hungry", "memory=48M", "pids=32"]).status == .exited(0))
            let bad = try await place.cli(["plugin", "set", "hungry", "memory=lots"])
            #expect(bad.err.contains("memory is a size"), "\(bad.err)")
            let before = try await place.cli(["plugin", "inspect", "hungry"])
            #expect(before.out.contains(#""memory_bytes" : 50331648"#), "\(before.out)")
            #expect(before.out.contains(#""pids" : 32"#), "\(before.out)")
            let (session, admin) = try await adminSession(place.socket)
            let events = try await pluginEvents(session, admin, plugin: "hungry")
            let ate = try? await adminCall(admin, "hungry.eat", .fields(("mib", 200)))
            #expect(ate == nil, "it ate 200 MiB under a 48 MiB limit")
            try await waitForActive(events, restarts: 1)
            let after = try await place.cli(["plugin", "inspect", "hungry"])
            #expect(after.out.contains("over-memory-limit"), "\(after.out)")
            #expect(after.out.contains("memory limit of 48 MiB"), "\(after.out)")
            session.close(reason: "done")
        }
        await place.stop(daemon)
    }

    @Test("without a cpu limit a plugin is scheduled in plugboardd's own cpu cgroup; a limit moves it into one of its own, at once and at every start, and lifting it moves it back")
    func cpuCgroupOnlyWithALimit() async throws {
        // The v1 layout of this machine: cpu in a hierarchy of its own.
        func cpuCgroup(_ pid: Int32) -> String? {
            let text = (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").first { line in
                let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                return fields.count == 3 && fields[0] != "0" && fields[1].split(separator: ",").contains("cpu")
            }.map { String($0.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)[2]) }
        }
        let daemonsOwn = try #require(cpuCgroup(getpid()), "this test needs a v1 cpu hierarchy (/proc/self/cgroup has no cpu line)")
        let daemon = try await place.startDaemon(try pluginExec("worker"))
        try await whileRunning(daemon) {
            let first = try #require(try await pid(of: "worker"))
            #expect(cpuCgroup(daemon.process.pid) == daemonsOwn)
            #expect(cpuCgroup(Int32(first)) == daemonsOwn, "no limit: scheduled as plugboardd's other children are")

            #expect(try await place.cli(["plugin", "set", "worker", "cpu=0.5"]).status == .exited(0))
            let limited = try #require(cpuCgroup(Int32(first)))
            #expect(limited.hasPrefix("/plugboard/d") && limited.hasSuffix("/worker"), "moved at once: \(limited)")
            let quota = try String(contentsOfFile: "/sys/fs/cgroup/cpu\(limited)/cpu.cfs_quota_us", encoding: .utf8)
            #expect(quota.trimmingCharacters(in: .whitespacesAndNewlines) == "50000")

            #expect(try await place.cli(["plugin", "set", "worker", "cpu=none"]).status == .exited(0))
            #expect(cpuCgroup(Int32(first)) == daemonsOwn, "lifted: moved back")

            #expect(try await place.cli(["plugin", "set", "worker", "cpu=0.25"]).status == .exited(0))
            #expect(try await place.cli(["plugin", "restart", "worker"]).status == .exited(0))
            let second = try #require(try await pid(of: "worker"))
            #expect(second != first)
            #expect(cpuCgroup(Int32(second)) == limited, "a restarted plugin starts in its cpu cgroup")
        }
        await place.stop(daemon)
    }

    private func pid(of plugin: String) async throws -> Int? {
        let inspect = try await place.cli(["plugin", "inspect", plugin])
        return (try JSONSerialization.jsonObject(with: Data(inspect.out.utf8)) as? [String: Any])?["pid"] as? Int
    }
}

@Suite("a hook changes only what its plugin was granted", .serialized)
struct HookPrivilegeTests {
    let place = DaemonPlace("hook-grants")

    /// `plugboard container create … -- COMMAND`: the socket goes before the `--`.
    func create(_ name: String, _ rootfs: String) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try await runCommand(try builtExecutable("plugboard"), ["container", "create", "--socket", place.socket, "--rootfs", rootfs, "--name", name, "--", "true"])
    }

    /// `plugin inspect NAME`'s hook privileges: asked and granted.
    func hookPrivileges(_ plugin: String) async throws -> (asked: [String], granted: [String]) {
        let out = try await place.cli(["plugin", "inspect", plugin]).out
        let info = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        let p = info?["hook_privileges"] as? [String: Any]
        return ((p?["asked"] as? [String]) ?? [], (p?["granted"] as? [String]) ?? [])
    }

    @Test("a container.create hook granted nothing cannot mount the host's / or replace the command; granted, it can")
    func hostileHook() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin", "containers", "--plugin", "host-mount", "/srv /srv"])
        try await whileRunning(daemon) {
            try FileManager.default.createDirectory(atPath: place.dir, withIntermediateDirectories: true)
            let rootfs = try busyboxRootfs(in: place.dir)
            // Required and ungranted: the chain fails, naming plugin, fields and grants.
            #expect(try await place.cli(["plugin", "add", "seizer", "--exec", "\(plugin) seize=required seize-declares"]).status == .exited(0))
            let refused = try await create("victim", rootfs)
            #expect(refused.status != .exited(0))
            for part in ["seizer", "mounts (/ at /host) needs the grant mount=/", "args needs the grant command"] {
                #expect(refused.err.contains(part), "missing \(part): \(refused.err)")
            }
            // Declared is not granted: plugin add gives nothing unless told.
            #expect(try await hookPrivileges("seizer") == (["mount=/", "command"], []))
            // host-mount declared its one mount and got it from the command line.
            #expect(try await hookPrivileges("host-mount") == (["mount=/srv"], ["mount=/srv"]))
            #expect(try await place.cli(["plugin", "rm", "seizer"]).status == .exited(0))

            // Optional and ungranted: its change is dropped and the container made without it.
            #expect(try await place.cli(["plugin", "add", "sneak", "--exec", "\(plugin) seize=optional"]).status == .exited(0))
            let made = try await create("safe", rootfs)
            #expect(made.status == .exited(0), "\(made.err)")
            let safe = try await place.cli(["container", "inspect", "safe"])
            let info = try JSONSerialization.jsonObject(with: Data(safe.out.utf8)) as? [String: Any]
            let spec = info?["spec"] as? [String: Any]
            #expect((spec?["mounts"] as? [[String: Any]])?.compactMap { $0["destination"] as? String } == ["/srv"], "\(safe.out)")
            #expect(spec?["args"] as? [String] == ["true"], "the ungranted command was applied: \(safe.out)")
            let skipped = (info?["skipped_hooks"] as? [[String: Any]])?.first
            #expect(skipped?["plugin"] as? String == "sneak" && (skipped?["reason"] as? String)?.contains("not granted") == true, "\(safe.out)")
            #expect(try await place.cli(["plugin", "rm", "sneak"]).status == .exited(0))

            // A bad grant is refused when given; a good one lets the change through.
            #expect(try await place.cli(["plugin", "add", "trusted", "--exec", "\(plugin) seize=required"]).status == .exited(0))
            let bogus = try await place.cli(["plugin", "grant", "trusted", "hook:everything"])
            #expect(bogus.status != .exited(0) && bogus.err.contains("not a hook privilege"), "\(bogus.err)")
            #expect(try await place.cli(["plugin", "grant", "trusted", "hook:mount=/", "hook:command"]).status == .exited(0))
            let granted = try await create("granted", rootfs)
            #expect(granted.status == .exited(0), "\(granted.err)")
            #expect(try await place.cli(["container", "inspect", "granted"]).out.contains("/host"))
        }
        await place.stop(daemon)
    }
}
