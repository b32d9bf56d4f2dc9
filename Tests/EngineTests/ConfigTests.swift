#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

@Suite("the configuration file, reload, and run-time changes kept across restarts", .serialized)
struct ConfigTests {
    let place = DaemonPlace("config")
    var file: String { place.dir + "/plugboard.toml" }

    func write(_ text: String) throws {
        try FileManager.default.createDirectory(atPath: place.dir, withIntermediateDirectories: true)
        try text.write(toFile: file, atomically: true, encoding: .utf8)
    }

    func check(_ text: String) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try write(text)
        return try await runCommand(try builtExecutable("plugboardd"), ["--check-config", file])
    }

    func testPlugin(_ name: String, _ options: String) throws -> String {
        """
        [plugins.\(name)]
        kind = "exec"
        command = ["\(try builtExecutable("plugboard-test-plugin"))", "\(options)"]

        """
    }

    func rows() async throws -> [String: [String: Any]] {
        let ls = try await place.cli(["plugin", "ls", "--format", "json"])
        let list = (try JSONSerialization.jsonObject(with: Data(ls.out.utf8)) as? [[String: Any]]) ?? []
        return Dictionary(list.compactMap { r in (r["name"] as? String).map { ($0, r) } }, uniquingKeysWith: { a, _ in a })
    }

    @Test("--check-config names file, line and key for unknown keys, bad values, wrong types and bad grants; a good file passes")
    func checkConfig() async throws {
        let good = try await check(try testPlugin("a", "provides=a.job") + "restart-policy = \"always\"\nmemory = \"64M\"\n")
        #expect(good.status == .exited(0) && good.out.contains("good: 1 plugins"), "\(good)")
        let cases: [(String, String)] = [
            ("log-level = \"loud\"\n", "plugboard.toml:1: log-level: is trace"),
            ("[plugins.a]\nkind = \"exec\"\nrestrat-policy = \"always\"\n", "plugboard.toml:3: plugins.a.restrat-policy: unknown key"),
            ("[plugins.a]\nkind = \"exec\"\nrestart-policy = \"sometimes\"\n", "plugboard.toml:3: plugins.a.restart-policy: restart-policy is always, on-failure or never"),
            ("[plugins.a]\nkind = \"exec\"\n\ngrants = [\"bogus=thing\"]\n", "plugboard.toml:4: plugins.a.grants: bogus=thing is not a grant"),
            ("[plugins.a]\nkind = \"exec\"\nrequired = \"yes\"\n", "plugboard.toml:3: plugins.a.required: must be true or false"),
            ("[plugins.a]\nkind = \"builtin\"\nbuiltin = \"nope\"\n", "plugboard.toml:3: plugins.a.builtin: no built-in plugin is named nope"),
            ("[plugins.a]\nkind = \"exec\"\nmemory = \"lots\"\n", "plugboard.toml:3: plugins.a.memory: memory is a size"),
            ("[plugins.\"../x\"]\nkind = \"exec\"\n", "plugins.../x: plugin name"),
            ("[plugins.a\nkind = 1\n", "plugboard.toml:1: (syntax)"),
        ]
        for (text, says) in cases {
            let r = try await check(text)
            #expect(r.status != .exited(0), "accepted: \(text)")
            #expect(r.err.contains(says), "\(text) -> \(r.err)")
        }
        // The example the install ships is itself a good file.
        let example = #filePath.replacingOccurrences(of: "Tests/EngineTests/ConfigTests.swift", with: "dist/plugboard.toml.example")
        let shipped = try await runCommand(try builtExecutable("plugboardd"), ["--check-config", example])
        #expect(shipped.status == .exited(0), "\(shipped.err)")
        try? FileManager.default.removeItem(atPath: place.dir)
    }

    @Test("plugins come from the file; an optional plugin that cannot start leaves the daemon running, listed failed")
    func optionalPlugins() async throws {
        try write(try testPlugin("fine", "provides=fine.job") + """
            [plugins.broken]
            kind = "exec"
            command = ["/no/such/plugin"]

            [plugins.host-mount]
            kind = "exec"
            options = "/srv /srv"

            """)
        let daemon = try await place.startDaemon(["--config", file])
        try await whileRunning(daemon) {
            let r = try await rows()
            #expect(r["fine"]?["state"] as? String == "active")
            // Only a name: plugboard-plugin-host-mount, found beside plugboardd.
            #expect(r["host-mount"]?["state"] as? String == "active" && r["host-mount"]?["kind"] as? String == "exec", "\(r["host-mount"] ?? [:])")
            #expect(r["broken"]?["state"] as? String == "failed")
            #expect(try await place.cli(["call", "fine.job", "\"hi\""]).out.contains("hi"))
        }
        await place.stop(daemon)
        // Required, the same failure stops the daemon.
        try write("[plugins.broken]\nkind = \"exec\"\ncommand = [\"/no/such/plugin\"]\nrequired = true\n")
        let refused = try await Daemon.start(in: place.dir, ["--config", file, "--plugin", "echo"])
        #expect(await refused.process.waitForExit() != .exited(0))
        try? FileManager.default.removeItem(atPath: place.dir)
    }

    @Test("a call without --timeout gets the deadline its job declared, not the daemon's 10 s")
    func declaredTimeout() async throws {
        let daemon = try await place.startDaemon(["--plugin-exec", "slow=\(try builtExecutable("plugboard-test-plugin")) slow=slow.job:700"])
        try await whileRunning(daemon) {
            let r = try await place.cli(["call", "slow.job"])
            #expect(r.status != .exited(0))
            #expect(r.err.contains("routing.timeout") || r.err.contains("did not answer"), "\(r.err)")
            // The deadline named is the job's (700 ms, or what was left of it), not 10 s.
            let named = r.err.firstMatch(of: #/within (\d+)ms/#).flatMap { Int($0.1) }
            #expect(named.map { $0 <= 700 } == true, "\(r.err)")
        }
        await place.stop(daemon)
    }

    @Test("SIGHUP: removed plugins stop, new ones start, changed ones restart, the rest are untouched; a bad file changes nothing")
    func reload() async throws {
        try write(try testPlugin("gone", "provides=gone.job") + testPlugin("changed", "provides=changed.one") + testPlugin("kept", "provides=kept.job"))
        let daemon = try await place.startDaemon(["--config", file])
        try await whileRunning(daemon) {
            let keptPid = try await rows()["kept"]?["pid"] as? Int
            #expect(keptPid != nil)
            try write(try testPlugin("changed", "provides=changed.two") + testPlugin("kept", "provides=kept.job") + testPlugin("new", "provides=new.job"))
            daemon.process.signal(SIGHUP)
            let line = try await withDeadline(30, "the reload") { await daemon.log.waitFor("configuration reloaded") }
            #expect(line?.contains("plugboard.started=[\"new\"]") == true && line?.contains("plugboard.stopped=[\"gone\"]") == true && line?.contains("plugboard.restarted=[\"changed\"]") == true, "\(line ?? "")")
            let r = try await rows()
            #expect(r["gone"] == nil && r["new"]?["state"] as? String == "active")
            #expect(r["kept"]?["pid"] as? Int == keptPid, "an unchanged plugin was restarted")
            #expect(try await place.cli(["call", "changed.two", "\"x\""]).status == .exited(0))
            // A bad file: refused, said, nothing changes.
            try write("[plugins.kept]\nkind = \"exec\"\nrestart-policy = \"sometimes\"\n")
            daemon.process.signal(SIGHUP)
            let refused = try await withDeadline(30, "the refusal") { await daemon.log.waitFor("configuration refused") }
            #expect(refused?.contains("restart-policy") == true, "\(refused ?? "")")
            #expect(try await rows()["kept"]?["pid"] as? Int == keptPid)
            #expect(daemon.process.exitStatus == nil)
        }
        await place.stop(daemon)
    }

    @Test("add, rm, disable, set and grant survive a restart of plugboardd; bad grants and a built-in without its option are refused at once")
    func persistence() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        try write(try testPlugin("configured", "provides=configured.job") + testPlugin("dropped", "provides=dropped.job") + testPlugin("paused", "provides=paused.job"))
        var daemon = try await place.startDaemon(["--config", file])
        try await whileRunning(daemon) {
            #expect(try await place.cli(["plugin", "add", "added", "--exec", "\(plugin) provides=added.job"]).status == .exited(0))
            #expect(try await place.cli(["plugin", "set", "configured", "restart-policy=never", "backoff-max=3s"]).status == .exited(0))
            #expect(try await place.cli(["plugin", "grant", "configured", "echo", "hook:command"]).status == .exited(0))
            #expect(try await place.cli(["plugin", "disable", "paused"]).status == .exited(0))
            #expect(try await place.cli(["plugin", "rm", "dropped"]).status == .exited(0))
            let bogus = try await place.cli(["plugin", "grant", "configured", "bogus=thing"])
            #expect(bogus.status != .exited(0) && bogus.err.contains("bogus=thing is not a grant"), "\(bogus.err)")
            let bare = try await place.cli(["plugin", "add", "hm", "--builtin", "host-mount"])
            #expect(bare.status != .exited(0) && bare.err.contains("HOST_DIR CONTAINER_DIR"), "\(bare.err)")
            #expect(try await rows()["hm"] == nil)
        }
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
        daemon = try await place.startDaemon(["--config", file])
        try await whileRunning(daemon) {
            let r = try await rows()
            #expect(r["added"]?["state"] as? String == "active", "\(r.keys.sorted())")
            #expect(r["paused"]?["state"] as? String == "disabled")
            #expect(r["dropped"] == nil)
            let inspect = try await place.cli(["plugin", "inspect", "configured"])
            let info = try JSONSerialization.jsonObject(with: Data(inspect.out.utf8)) as? [String: Any]
            #expect(info?["restart_policy"] as? String == "never")
            #expect(((info?["permissions"] as? [String: Any])?["granted"] as? [String])?.contains("echo") == true, "\(inspect.out)")
            #expect(((info?["hook_privileges"] as? [String: Any])?["granted"] as? [String]) == ["command"], "\(inspect.out)")
            #expect(try await place.cli(["call", "added.job", "\"back\""]).out.contains("back"))
            // Changing the file's entry for a plugin drops what was changed at run time.
            try write(try testPlugin("configured", "provides=configured.job2") + testPlugin("dropped", "provides=dropped.job") + testPlugin("paused", "provides=paused.job"))
        }
        daemon.process.signal(SIGTERM)
        _ = await daemon.process.waitForExit()
        daemon = try await place.startDaemon(["--config", file])
        try await whileRunning(daemon) {
            let inspect = try await place.cli(["plugin", "inspect", "configured"])
            #expect(inspect.out.contains("on-failure"), "run-time changes outlived a changed entry: \(inspect.out)")
            #expect(daemon.log.all.contains { $0.contains("run-time changes dropped") && $0.contains("configured") })
            // Its entry did not change: the rm still holds.
            #expect(try await rows()["dropped"] == nil, "a removal was forgotten though its entry is the same")
        }
        await place.stop(daemon)
    }
}
