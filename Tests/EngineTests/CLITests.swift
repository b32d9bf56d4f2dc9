#if canImport(Glibc)
import Glibc
#endif
import Chan
import Engine
import Foundation
import Spawn
import Testing
import TestSupport

/// Runs `plugboard` with exactly these words (no socket added) and this environment.
func plugboardCLI(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
    try await runCommand(try builtExecutable("plugboard"), arguments, environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin"].merging(environment) { $1 })
}

/// The lines of `text`, without the empty last one.
func lines(_ text: String) -> [String] {
    text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { !$0.isEmpty }
}

/// `text` parsed as JSON.
func parsedJSON(_ text: String) -> Any? {
    try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
}

/// The `{"error": {"code", "message"}}` a command printed on stderr with --format json.
func jsonError(_ err: String) -> (code: String, message: String)? {
    guard let object = parsedJSON(err) as? [String: Any], let error = object["error"] as? [String: Any],
          let code = error["code"] as? String, let message = error["message"] as? String else { return nil }
    return (code, message)
}

@Suite("the plugboard CLI fits: global options, versions, timeouts, formats, completions, history", .serialized)
struct CLITests {
    let place = DaemonPlace("cli-test")
    var socket: String { place.socket }

    @Test("--socket and -H work before the subcommand and after it; PLUGBOARD_SOCKET still works; a wrong socket says so")
    func globalOptions() async throws {
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            for words in [
                ["--socket", socket, "plugin", "ls", "-q"], ["-H", socket, "plugin", "ls", "-q"],
                ["plugin", "ls", "-q", "-H", socket], ["plugin", "-H", socket, "ls", "-q"], ["--socket=\(socket)", "endpoints", "-q"],
            ] {
                let r = try await plugboardCLI(words)
                #expect(r.status == .exited(0) && lines(r.out).contains("echo"), "\(words): \(r.err)")
            }
            let byEnvironment = try await plugboardCLI(["plugin", "ls", "-q"], environment: ["PLUGBOARD_SOCKET": socket])
            #expect(byEnvironment.status == .exited(0) && lines(byEnvironment.out).contains("echo"), "\(byEnvironment.err)")
            // The option wins over the environment.
            let both = try await plugboardCLI(["-H", socket, "plugin", "ls", "-q"], environment: ["PLUGBOARD_SOCKET": "/nonexistent/admin.sock"])
            #expect(both.status == .exited(0), "\(both.err)")
            let wrong = try await plugboardCLI(["-H", place.dir + "/nobody.sock", "plugin", "ls"])
            #expect(wrong.status != .exited(0) && wrong.err.contains("nothing at \(place.dir)/nobody.sock"), "\(wrong.err)")
            // The help shows the global option at the root too.
            #expect(try await plugboardCLI(["--help"]).out.contains("-H, --socket <path>"))
        }
        await place.stop(daemon)
    }

    @Test("plugboard version shows the client's, the daemon's and the protocol versions; --version on plugboard and plugboard-sh")
    func versions() async throws {
        let release = PlugboardVersion.release
        let line = "plugboard \(release) (protocol \(Hello.currentProtocol))"
        let version = try await plugboardCLI(["--version"])
        #expect(version.status == .exited(0) && version.out == line + "\n", "\(version)")
        let sh = try await runCommand(try builtExecutable("plugboard-sh"), ["--version"])
        #expect(sh.status == .exited(0) && sh.out == "plugboard-sh \(release) (protocol \(Hello.currentProtocol))\n", "\(sh)")
        // plugboard-sh --check writes durations for people too.
        let script = place.dir + "-check.sh"
        defer { try? FileManager.default.removeItem(atPath: script) }
        try writeScript(script, "#!/bin/sh\n# plugboard: job slow.job timeout=90s\n")
        let check = try await runCommand(try builtExecutable("plugboard-sh"), ["--check", script])
        #expect(check.out.contains("timeout=1m30s"), "\(check)")
        // No daemon: the client's version, then the failure.
        let alone = try await plugboardCLI(["version", "-H", place.dir + "/nobody.sock"])
        #expect(alone.status != .exited(0) && alone.out.contains("Client: \(line)") && alone.err.contains("not running"), "\(alone)")

        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            let text = try await place.cli(["version"])
            #expect(text.status == .exited(0), "\(text.err)")
            #expect(lines(text.out) == ["Client: \(line)", "Daemon: plugboardd \(release) (protocol \(Hello.currentProtocol)) at \(socket)"], "\(text.out)")
            let json = try await place.cli(["version", "--format", "json"])
            let object = parsedJSON(json.out) as? [String: Any]
            let daemonVersion = object?["daemon"] as? [String: Any]
            #expect(daemonVersion?["version"] as? String == release && daemonVersion?["protocol"] as? Int == Int(Hello.currentProtocol), "\(json.out)")
            #expect((object?["client"] as? [String: Any])?["version"] as? String == release)
        }
        await place.stop(daemon)
    }

    @Test("call --timeout is the daemon's deadline for the job: a 1.5 s job fails at 500ms and answers within 5s; without it the daemon's default applies")
    func callTimeout() async throws {
        try FileManager.default.createDirectory(atPath: place.dir, withIntermediateDirectories: true)
        let script = place.dir + "-slow.sh"
        defer { try? FileManager.default.removeItem(atPath: script) }
        // The script allows itself a minute: only the caller's deadline cuts the call.
        try writeScript(script, "#!/bin/sh\n# plugboard: job slow.sleep timeout=60s\nsleep 1.5\necho '\"slept\"'\n")
        let daemon = try await place.startDaemon([
            "--plugin-exec", "slow=\(try builtExecutable("plugboard-sh")) \(script)",
            "--plugin-exec", "t=\(try builtExecutable("plugboard-test-plugin"))",
        ])
        try await whileRunning(daemon) {
            let hang = try await place.cli(["call", "--timeout", "300ms", "t.hang"])
            #expect(hang.status != .exited(0) && hang.err.contains("did not answer job t.hang within") && hang.err.contains("(--timeout 300ms) [routing.timeout]"), "\(hang.err)")
            let short = try await place.cli(["call", "--timeout", "500ms", "slow.sleep"])
            #expect(short.status != .exited(0) && short.err.contains("did not answer job slow.sleep within") && short.err.contains("(--timeout 500ms)"), "\(short.err)")
            let long = try await place.cli(["call", "--timeout", "5s", "slow.sleep"])
            #expect(long.status == .exited(0) && long.out == "\"slept\"\n", "\(long)")
            // No --timeout: the request carries none and the daemon's default (10s) applies; the CLI cuts nothing shorter.
            let plain = try await place.cli(["call", "slow.sleep", "--format", "text"])
            #expect(plain.status == .exited(0) && plain.out == "slept\n", "\(plain)")
            // The timeout as a JSON error.
            let json = try await place.cli(["call", "--timeout", "300ms", "t.hang", "--format", "json"])
            let error = jsonError(json.err)
            #expect(json.status != .exited(0) && error?.code == "routing.timeout" && error?.message.contains("(--timeout 300ms)") == true, "\(json.err)")
            let bad = try await place.cli(["call", "--timeout", "soon", "echo"])
            #expect(bad.status == .exited(64) && bad.err.contains("--timeout"), "\(bad.err)")
        }
        await place.stop(daemon)
    }

    @Test("listings take -q and --format json; errors come as JSON too; inspect --format prints one field; durations read as 2s and 100ms; empty lists are []")
    func formats() async throws {
        let daemon = try await place.startDaemon(["--plugin", "host-mount", "/data /var/data"])
        try await whileRunning(daemon) {
            #expect(lines(try await place.cli(["plugin", "ls", "-q"]).out) == ["events", "metrics", "state", "echo", "host-mount"])
            let names = parsedJSON(try await place.cli(["plugin", "ls", "-q", "--format", "json"]).out) as? [String]
            #expect(names == ["events", "metrics", "state", "echo", "host-mount"])
            let endpoints = lines(try await place.cli(["endpoints", "-q"]).out)
            #expect(endpoints.contains("echo") && endpoints.contains("state.get") && Set(endpoints).count == endpoints.count, "\(endpoints)")
            #expect(lines(try await place.cli(["hooks", "-q"]).out) == ["container.create"])
            // Nothing registered in the pipeline: no names, an empty table, and [] as JSON.
            #expect(try await place.cli(["pipeline", "-q"]).out == "")
            #expect(try await place.cli(["pipeline", "--format", "json"]).out == "[]\n")
            #expect(lines(try await place.cli(["pipeline"]).out) == ["TYPE   PLUGIN   PRIORITY"])

            // Durations for people: the hooks' TIMEOUT column and JSON, and inspect's backoff.
            let hooks = try await place.cli(["hooks"])
            #expect(lines(hooks.out).last?.hasSuffix(" 2s") == true, "\(hooks.out)")
            let inspect = try await place.cli(["plugin", "inspect", "host-mount"])
            #expect(inspect.out.contains(#""initial" : "100ms""#) && inspect.out.contains(#""timeout" : "2s""#), "\(inspect.out)")
            #expect(!inspect.out.contains("seconds"), "no Duration description leaks: \(inspect.out)")
            // JSON without \/ : the option string holds slashes.
            #expect(inspect.out.contains(#""options" : "/data /var/data""#) && !inspect.out.contains(#"\/"#), "\(inspect.out)")
            #expect(inspect.out.contains(#""pipeline" : []"#), "an empty list is []: \(inspect.out)")

            // inspect --format: one field, by path or Go-template style.
            #expect(try await place.cli(["plugin", "inspect", "echo", "--format", "state"]).out == "active\n")
            #expect(try await place.cli(["plugin", "inspect", "echo", "--format", "{{.state}}"]).out == "active\n")
            #expect(try await place.cli(["plugin", "inspect", "host-mount", "--format", "backoff.maximum"]).out == "10s\n")
            #expect(try await place.cli(["plugin", "inspect", "host-mount", "--format", "registrations.hooks.0.priority"]).out == "50\n")
            #expect(try await place.cli(["plugin", "inspect", "echo", "--format", "restarts"]).out == "0\n")
            let noField = try await place.cli(["plugin", "inspect", "echo", "--format", "colour"])
            #expect(noField.status != .exited(0) && noField.err.contains("no field colour; its fields are name, kind, state"), "\(noField.err)")

            // --format json on actions and on errors.
            let restarted = parsedJSON(try await place.cli(["plugin", "restart", "echo", "--format", "json"]).out) as? [String: String]
            #expect(restarted == ["name": "echo", "result": "restarted"])
            let ghost = try await place.cli(["plugin", "inspect", "ghost", "--format", "json"])
            #expect(ghost.status != .exited(0) && ghost.out.isEmpty)
            let error = jsonError(ghost.err)
            #expect(error?.code == "engine.unknown-plugin" && error?.message.contains("no plugin named ghost") == true, "\(ghost.err)")
            let text = try await place.cli(["plugin", "inspect", "ghost"])
            #expect(text.err.hasPrefix("Error: no plugin named ghost") && text.err.hasSuffix(" [engine.unknown-plugin]\n"), "\(text.err)")
            let usage = try await place.cli(["plugin", "ls", "--bogus", "--format", "json"])
            #expect(usage.status == .exited(64) && jsonError(usage.err)?.code == "cli.usage", "\(usage.err)")
            let offline = try await plugboardCLI(["plugin", "ls", "--format", "json", "-H", place.dir + "/nobody.sock"])
            #expect(jsonError(offline.err)?.code == "cli.not-running", "\(offline.err)")
        }
        await place.stop(daemon)
    }

    @Test("a validation error shows the subcommand's usage, not the root's; every argument and option has help")
    func usageAndHelp() async throws {
        for (words, usage) in [
            (["plugin", "add", "x"], "Usage: plugboard plugin add"),
            (["call", "echo", "{not json"], "Usage: plugboard call"),
            (["plugin", "set", "x", "nokeyvalue"], "Usage: plugboard plugin set"),
            (["events", "--filter", "novalue"], "Usage: plugboard events"),
            (["container", "create", "--rootfs", "/tmp"], "Usage: plugboard container create"),
        ] {
            let r = try await plugboardCLI(words + ["-H", place.dir + "/nobody.sock"])
            #expect(r.status == .exited(64), "\(words): \(r)")
            #expect(r.err.contains(usage) && !r.err.contains("Usage: plugboard <subcommand>"), "\(words): \(r.err)")
        }
        // Every command's every argument, option and flag says what it is for.
        let dump = try await plugboardCLI(["--experimental-dump-help"])
        let tool = try #require(parsedJSON(dump.out) as? [String: Any], "\(dump.err)")
        var missing: [String] = []
        var commands = 0
        func walk(_ command: [String: Any], _ path: String) {
            commands += 1
            for argument in command["arguments"] as? [[String: Any]] ?? [] {
                let names = (argument["names"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
                let label = names.first ?? (argument["valueName"] as? String ?? "?")
                if ["help", "version", "h"].contains(label) { continue }
                if (argument["abstract"] as? String ?? "").isEmpty { missing.append("\(path) \(label)") }
            }
            // argument-parser's own `help` command is not ours to describe.
            for sub in command["subcommands"] as? [[String: Any]] ?? [] where sub["commandName"] as? String != "help" {
                walk(sub, path + " " + (sub["commandName"] as? String ?? "?"))
            }
        }
        walk(try #require(tool["command"] as? [String: Any]), "plugboard")
        #expect(commands > 25)
        #expect(missing.isEmpty, "without help: \(missing)")
    }

    @Test("completions name the running daemon's plugins and jobs; without a daemon they name nothing")
    func completions() async throws {
        let daemon = try await place.startDaemon(["--plugin", "host-mount", "/data /var/data"])
        try await whileRunning(daemon) {
            let plugins = try await plugboardCLI(["---completion", "plugin", "inspect", "--", "positional@0", "3", "0", "plugboard", "plugin", "inspect", ""], environment: ["PLUGBOARD_SOCKET": socket])
            #expect(plugins.status == .exited(0) && lines(plugins.out) == ["echo", "events", "host-mount", "metrics", "state"], "\(plugins)")
            // The socket named on the line being completed, and a prefix.
            let prefixed = try await plugboardCLI(["---completion", "plugin", "rm", "--", "positional@0", "5", "1", "plugboard", "-H", socket, "plugin", "rm", "h"])
            #expect(lines(prefixed.out) == ["host-mount"], "\(prefixed)")
            let jobs = try await plugboardCLI(["---completion", "call", "--", "positional@0", "2", "6", "plugboard", "call", "state."], environment: ["PLUGBOARD_SOCKET": socket])
            #expect(lines(jobs.out).contains("state.get") && lines(jobs.out).allSatisfy { $0.hasPrefix("state.") }, "\(jobs)")
            // No containers plugin: nothing to complete, quickly and quietly.
            let containers = try await plugboardCLI(["---completion", "container", "inspect", "--", "positional@0", "3", "0", "plugboard", "container", "inspect", ""], environment: ["PLUGBOARD_SOCKET": socket])
            #expect(containers.status == .exited(0) && containers.out.isEmpty, "\(containers)")
        }
        await place.stop(daemon)
        let none = try await plugboardCLI(["---completion", "plugin", "inspect", "--", "positional@0", "3", "0", "plugboard", "plugin", "inspect", ""], environment: ["PLUGBOARD_SOCKET": socket])
        #expect(none.status == .exited(0) && none.out.isEmpty, "\(none)")
        // The scripts the shells load carry the daemon-backed completions.
        let bash = try await plugboardCLI(["--generate-completion-script", "bash"])
        #expect(bash.status == .exited(0) && bash.out.contains("---completion"), "\(bash.err)")
    }

    @Test("events --since replays the kept history by age or by seq, then follows; plugin.added, plugin.add-failed and plugin.removed are published")
    func eventsSince() async throws {
        let daemon = try await place.startDaemon()
        try await whileRunning(daemon) {
            let plugin = try builtExecutable("plugboard-test-plugin")
            #expect(try await place.cli(["plugin", "add", "w", "--exec", plugin]).status == .exited(0))
            let failed = try await place.cli(["plugin", "add", "bad", "--builtin", "no-such-builtin"])
            #expect(failed.status != .exited(0))
            #expect(try await place.cli(["plugin", "grant", "w", "echo"]).status == .exited(0))
            #expect(try await place.cli(["plugin", "rm", "w"]).status == .exited(0))

            // Everything kept, the operator's actions only.
            let actions = ["plugin.added", "plugin.add-failed", "plugin.granted", "plugin.removed"]
            let all = try await follow(["--since", "0"] + actions.flatMap { ["--type", $0] }, until: "plugin.removed")
            #expect(all.map { $0["type"] as? String } == actions, "\(all)")
            #expect(all[0]["plugin"] as? String == "w" && all[0]["kind"] as? String == "exec" && all[0]["state"] as? String == "active")
            #expect(all[1]["plugin"] as? String == "bad" && all[1]["code"] as? String == "engine.unknown-built-in", "\(all[1])")
            #expect((all[1]["error"] as? String)?.contains("no built-in plugin named no-such-builtin") == true, "\(all[1])")
            #expect(all.allSatisfy { $0["source"] as? String == "operator" })

            // By age: the last ten minutes hold all of w's events, in order, the same ones.
            let recent = try await follow(["--since", "10m", "--filter", "plugin=w"], until: "plugin.removed")
            let types = recent.compactMap { $0["type"] as? String }
            #expect(types.contains("plugin.active") && types.contains("plugin.added") && types.last == "plugin.removed", "\(types)")
            let seqs = recent.compactMap { $0["seq"] as? Int }
            #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)

            // By seq: only what came after the add.
            let added = try #require(all[0]["seq"] as? Int)
            let after = try await follow(["--since", "\(added)", "--filter", "plugin=w"], until: "plugin.removed")
            #expect(after.allSatisfy { ($0["seq"] as? Int ?? 0) > added } && !after.contains { $0["type"] as? String == "plugin.added" }, "\(after)")
        }
        await place.stop(daemon)
    }

    @Test("container wait prints the exit code; run --rm removes a container whose start a hook vetoed; ls -q and completion name containers")
    func containerWaitAndRm() async throws {
        try requireContainerHost()
        let dir = try containerTestDirectory("cli-containers")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rootfs = try busyboxRootfs(in: dir)
        // A container.start validator that vetoes containers named blocked*.
        try writeScript(dir + "/veto.sh", "#!/bin/sh\n# plugboard: hook container.start phase=validate format=env\ncase \"$PB_NAME\" in blocked*) echo \"blocked containers may not start\"; exit 3;; esac\n")
        let daemon = try await Daemon.startReady(socket: dir + "/admin.sock", stateDirectory: dir + "/state", [
            "--plugin", "containers", "--plugin-exec", "veto=\(try builtExecutable("plugboard-sh")) \(dir)/veto.sh",
        ])
        // The socket by environment: words after -- belong to the container's command.
        let environment = ["PLUGBOARD_SOCKET": dir + "/admin.sock"]
        try await whileRunning(daemon) {
            let vetoed = try await plugboardCLI(["container", "run", "--rm", "--name", "blocked", "--rootfs", rootfs, "--", "true"], environment: environment)
            #expect(vetoed.status != .exited(0) && vetoed.err.contains("blocked containers may not start"), "\(vetoed.err)")
            #expect(try await plugboardCLI(["container", "ls", "-q"], environment: environment).out == "", "--rm removed the vetoed container")
            // Without --rm the vetoed container stays, created, as docker's would.
            let kept = try await plugboardCLI(["container", "run", "--name", "blocked-kept", "--rootfs", rootfs, "--", "true"], environment: environment)
            #expect(kept.status != .exited(0))
            #expect(lines(try await plugboardCLI(["container", "ls", "-q"], environment: environment).out).count == 1)

            let created = try await plugboardCLI(["container", "create", "--name", "sleeper", "--rootfs", rootfs, "--", "sh", "-c", "sleep 1; exit 5"], environment: environment)
            #expect(created.status == .exited(0), "\(created.err)")
            let id = created.out.trimmingCharacters(in: .whitespacesAndNewlines)
            let completion = try await plugboardCLI(["---completion", "container", "wait", "--", "positional@0", "3", "1", "plugboard", "container", "wait", "s"], environment: environment)
            #expect(lines(completion.out) == ["sleeper"], "\(completion)")
            #expect(try await plugboardCLI(["container", "start", "sleeper"], environment: environment).status == .exited(0))
            let waited = try await plugboardCLI(["container", "wait", "sleeper"], environment: environment)
            #expect(waited.status == .exited(0) && waited.out == "5\n", "\(waited)")
            let json = parsedJSON(try await plugboardCLI(["container", "wait", id, "--format", "json"], environment: environment).out) as? [String: Any]
            #expect(json?["exit_code"] as? Int == 5, "\(String(describing: json))")
            #expect(try await plugboardCLI(["container", "inspect", "sleeper", "--format", "state"], environment: environment).out == "exited\n")
            let ids = lines(try await plugboardCLI(["container", "ls", "-q"], environment: environment).out)
            #expect(ids.count == 2 && ids.contains(id), "\(ids)")
            for c in ["sleeper", "blocked-kept"] { _ = try await plugboardCLI(["container", "rm", "--force", c], environment: environment) }
        }
        daemon.process.signal(SIGTERM)
        #expect(try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() } == .exited(0))
    }

    /// Runs `plugboard events --format json ARGS` until a line of type `last` arrives, and
    /// returns the events it printed.
    func follow(_ arguments: [String], until last: String) async throws -> [[String: Any]] {
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        let follower = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboard"), arguments: ["events", "--format", "json", "-H", socket] + arguments,
            environment: childEnvironment(["PATH": "/usr/bin:/bin"]), fileDescriptors: [1: out.writeEnd, 2: err.writeEnd]
        ))
        close(out.writeEnd)
        close(err.writeEnd)
        let printed = LogLines(fd: out.readEnd)
        _ = LogLines(fd: err.readEnd)
        let seen = try await withDeadline(30, "the \(last) event") { await printed.waitFor(#""type":"\#(last)""#) }
        follower.signal(SIGTERM)
        _ = await follower.waitForExit()
        try #require(seen != nil, "no \(last) event: \(printed.all)")
        return printed.all.compactMap { parsedJSON($0) as? [String: Any] }
    }
}

@Suite("the event bus keeps a bounded history")
struct EventHistoryTests {
    @Test("a subscriber may start in the past: the last 1000 events at most, by seq or by age, then live ones without a gap")
    func history() async throws {
        let bus = EventBus()
        for i in 0..<1500 { bus.publish(i % 2 == 0 ? "test.even" : "test.odd", [("i", .int(Int64(i)))]) }
        let everything = bus.subscribe(replay: .afterSequence(0))
        let afterSome = bus.subscribe(EventFilter(types: ["test.odd"]), replay: .afterSequence(1490))
        let recent = bus.subscribe(replay: .within(.seconds(600)))
        let live = bus.subscribe()
        bus.publish("test.live", [])
        var seqs: [UInt64] = []
        while seqs.count < EventBus.historyCapacity + 1, case .event(let e)? = await everything.next() { seqs.append(e["seq"]?.uintValue ?? 0) }
        #expect(seqs.first == 501 && seqs.last == 1501 && seqs == Array(501...1501), "the oldest 500 are gone; no gap before the live one")
        var odd: [Int64] = []
        while odd.count < 5, case .event(let e)? = await afterSome.next() { odd.append(e["i"]?.intValue ?? -1) }
        #expect(odd == [1491, 1493, 1495, 1497, 1499], "after seq 1490, only the odd ones (i = seq - 1)")
        if case .event(let e)? = await recent.next() { #expect(e["seq"]?.uintValue == 501) } else { Issue.record("no replay by age") }
        if case .event(let e)? = await live.next() { #expect(e["type"] == "test.live", "a subscriber without a replay starts now") } else { Issue.record("no live event") }
        #expect(bus.latestSequence == 1501)
        for s in [everything, afterSome, recent, live] { s.cancel() }
    }

    @Test("the history weighs at most 8 MiB: big events push the oldest out, the newest kept in order")
    func historyBudget() async throws {
        let bus = EventBus()
        // Just under the 64 KiB an event may weigh: 8 MiB holds about 136 of them.
        let blob = String(repeating: "x", count: 60_000)
        for i in 0..<200 { bus.publish("test.big", [("i", .int(Int64(i))), ("blob", .string(blob))]) }
        bus.publish("test.small", [])
        let replay = bus.subscribe(replay: .afterSequence(0))
        bus.publish("test.end", [])
        var kept: [Int64] = []
        var sawSmall = false
        while case .event(let e)? = await replay.next() {
            let type = e["type"]?.stringValue ?? "?"
            if type == "test.end" { break }
            if type == "test.small" { sawSmall = true } else { kept.append(e["i"]?.intValue ?? -1) }
        }
        replay.cancel()
        #expect(sawSmall)
        #expect(kept.count < 200 && kept.count * 60_000 <= EventBus.historyByteBudget, "\(kept.count) kept")
        #expect(kept.count > 100, "\(kept.count) kept")
        // The newest, oldest first, without a gap.
        #expect(kept == Array((200 - Int64(kept.count))..<200), "\(kept.prefix(3))…\(kept.suffix(3))")
    }
}
