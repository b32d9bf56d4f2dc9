#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import ShellAdapter
import Spawn
import Testing
import TestSupport

/// The repository's root, for the shipped scripts.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Writes an executable script.
func writeScript(_ path: String, _ text: String) throws {
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o755)
}

@Suite("plugboard-sh: shell scripts as plugins under a real daemon", .serialized)
struct ShellDaemonTests {
    let dir = "/tmp/plugboard-shell-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    func start(_ arguments: [String]) async throws -> Daemon {
        try await Daemon.startReady(socket: dir + "/admin.sock", stateDirectory: dir + "/state", arguments)
    }

    func cli(_ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        // The socket by environment: an option after "--" would belong to the container's command.
        try await runCommand(try builtExecutable("plugboard"), arguments, environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PLUGBOARD_SOCKET": dir + "/admin.sock"])
    }

    func stop(_ daemon: Daemon) async throws {
        daemon.process.signal(SIGTERM)
        let status = try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test("a malformed header stops the plugin from starting, naming the line")
    func malformedUnderDaemon() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeScript(dir + "/broken.sh", "#!/bin/sh\n# plugboard: job ok.job\n# plugboard: hook container.create priority=soon\n")
        let sh = try builtExecutable("plugboard-sh")
        let check = try await runCommand(sh, ["--check", dir + "/broken.sh"])
        #expect(check.status == .exited(2) && check.err.contains("broken.sh line 3: priority must be a whole number"), "\(check.err)")
        let daemon = try await Daemon.start(in: dir, ["--plugin-exec", "broken=\(sh) \(dir)/broken.sh"])
        let status = try await withDeadline(60, "plugboardd to give up") { await daemon.process.waitForExit() }
        #expect(status != .exited(0))
        #expect(daemon.log.all.contains { $0.contains("broken.sh line 3") }, "\(daemon.log.all.suffix(5))")
    }

    @Test("no more call-mode processes run at once than --concurrency; the rest queue and all finish")
    func concurrencyLimit() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let sh = try builtExecutable("plugboard-sh")
        // Each call holds a slot directory, records how many slots it saw (a count can only
        // be lower than the processes running then), says it started, and then waits until
        // the test releases it through its own FIFO.
        try writeScript(dir + "/slow.sh", """
            #!/bin/sh
            # plugboard: job slow.work timeout=30s
            mkdir \(dir)/slot.$$
            ls -d \(dir)/slot.* | wc -l >> \(dir)/counts
            mkfifo \(dir)/gate.$$
            echo "started $$" > \(dir)/started
            read released < \(dir)/gate.$$
            rm -f \(dir)/gate.$$
            rmdir \(dir)/slot.$$
            echo '"done"'
            """)
        // The test reads the start notices; opened read-write so that it never sees an end.
        try #require(mkfifo(dir + "/started", 0o600) == 0)
        let started = LogLines(fd: open(dir + "/started", O_RDWR))
        let daemon = try await start(["--plugin-exec", "slow=\(sh) --concurrency 2 \(dir)/slow.sh"])
        try await whileRunning(daemon) {
            let calls = Task {
                try await withThrowingTaskGroup(of: String.self) { group in
                    for _ in 0..<8 { group.addTask { try await cli(["call", "slow.work"]).out } }
                    var all: [String] = []
                    for try await r in group { all.append(r) }
                    return all
                }
            }
            // Hold two at a time: a third can start only if the limit let it through, and
            // then it counts three slots. Release the oldest whenever two are held.
            var held: [String] = []
            for k in 0..<8 {
                let line = try await withDeadline(60, "call \(k + 1) to start") { await started.line(k) }
                held.append(String(line?.split(separator: " ").last ?? ""))
                if held.count == 2 { release(held.removeFirst()) }
            }
            held.forEach(release)
            let results = try await withDeadline(60, "all calls to finish") { try await calls.value }
            #expect(results.filter { $0.contains("done") }.count == 8, "every queued call finished: \(results)")
            let counts = try String(contentsOfFile: dir + "/counts", encoding: .utf8).split(separator: "\n").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            #expect(counts.count == 8)
            #expect(counts.max() ?? 99 <= 2, "at most 2 at once: \(counts)")
        }
        try await stop(daemon)
    }

    /// Lets the script with `pid` go on: opening its FIFO for writing waits for the script to
    /// open it for reading, so it happens on a thread of its own.
    func release(_ pid: String) {
        let path = dir + "/gate." + pid
        Thread.detachNewThread {
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { return }
            var go = Array("go\n".utf8)
            _ = write(fd, &go, go.count)
            close(fd)
        }
    }

    @Test("the shipped scripts: audit log, an added env variable, a job in shell, a stream-mode job")
    func shippedScripts() async throws {
        try requireContainerHost()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let sh = try builtExecutable("plugboard-sh")
        let scripts = repositoryRoot + "/plugins/shell"
        let auditLog = dir + "/audit.log"
        let daemon = try await start([
            "--plugin", "containers",
            "--plugin-exec", "audit=\(sh) \(scripts)/audit.sh \(auditLog)",
            "--plugin-exec", "add-env=\(sh) \(scripts)/add-env.sh TEAM=blue",
            "--plugin-exec", "du=\(sh) \(scripts)/disk-usage.sh",
            "--plugin-exec", "counter=\(sh) \(scripts)/counter.sh",
        ])
        try await whileRunning(daemon) {
            let rootfs = try busyboxRootfs(in: dir)
            let created = try await cli(["container", "create", "--rootfs", rootfs, "--name", "web", "--", "true"])
            #expect(created.status == .exited(0), "\(created.err)")
            let id = created.out.trimmingCharacters(in: .whitespacesAndNewlines)
            let inspected = try await cli(["container", "inspect", "web"])
            #expect(inspected.out.contains("\"TEAM=blue\""), "\(inspected.out)")
            #expect(inspected.out.contains("\"env[0]\" : \"add-env\""), "\(inspected.out)")
            // The audit hook ran last (priority 10) and saw the added variable.
            let audit = try String(contentsOfFile: auditLog, encoding: .utf8)
            #expect(audit.contains(id) && audit.contains("TEAM=blue") && audit.contains("\"name\":\"web\""), "\(audit)")

            let usage = try await cli(["call", "disk.usage", "{\"path\": \"\(scripts)\"}"])
            #expect(usage.status == .exited(0) && usage.out.contains("\"kb\"") && usage.out.contains("shell"), "\(usage)")
            let missing = try await cli(["call", "disk.usage", "{\"path\": \"/no/such/dir\"}"])
            #expect(missing.status != .exited(0) && missing.err.contains("/no/such/dir is not a directory"), "\(missing.err)")

            // One process answers every stream-mode call: the count goes on across calls.
            for expected in 1...3 {
                let next = try await cli(["call", "counter.next"])
                #expect(next.out.contains("\"count\" : \(expected)"), "\(next)")
        }
        #expect(try await cli(["call", "counter.peek"]).out.contains("\"count\" : 3"))
        }
        try await stop(daemon)
    }

    @Test("hangs, failures, garbage and vetoes each end the call with an error that says what happened; scripts call back with their grants")
    func misbehaviour() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let sh = try builtExecutable("plugboard-sh")
        let pidFile = dir + "/background.pid"
        try writeScript(dir + "/bad.sh", """
            #!/bin/sh
            # plugboard: job bad.hang timeout=300ms
            # plugboard: job bad.fail
            # plugboard: job bad.garbage
            # plugboard: job bad.stream mode=stream timeout=300ms
            # plugboard: job bad.echo
            # plugboard: calls echo
            # plugboard: job bad.forbidden
            case "$1" in
              bad.hang) sleep 1000 & echo $! > \(pidFile); wait ;;
              bad.fail) echo "disk on fire" >&2; exit 9 ;;
              bad.garbage) echo "this is {not json" ;;
              bad.echo) plugboard-sh call echo "$(cat)" ;;
              bad.forbidden) plugboard-sh call secret.job '{}' ;;
              --stream) while read -r line; do echo "not json either"; done ;;
            esac
            """)
        try writeScript(dir + "/veto.sh", """
            #!/bin/sh
            # plugboard: hook container.create priority=5
            spec=$(cat)
            case "$spec" in
              *'"name":"sunday"'*) echo "no containers on Sundays"; exit 3 ;;
              *'"name":"other"'*) echo "veto: other containers are out" ;;
            esac
            """)
        try requireContainerHost()
        let daemon = try await start([
            "--plugin", "echo", "--plugin", "containers",
            "--plugin-exec", "bad=\(sh) \(dir)/bad.sh",
            "--plugin-exec", "veto=\(sh) \(dir)/veto.sh",
        ])
        try await whileRunning(daemon) {
            let hang = try await cli(["call", "bad.hang"])
            #expect(hang.status != .exited(0) && hang.err.contains("timeout of 0.3 seconds") && hang.err.contains("process group was killed"), "\(hang.err)")
            let background = try #require(pid_t(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(ProcessWatch.waitUntilGone(background, timeout: .seconds(10)), "the script's background child \(background) was killed with its group")

            let fail = try await cli(["call", "bad.fail"])
            #expect(fail.err.contains("exited with status 9") && fail.err.contains("disk on fire"), "\(fail.err)")
            let garbage = try await cli(["call", "bad.garbage"])
            #expect(garbage.err.contains("not JSON") && garbage.err.contains("this is {not json"), "\(garbage.err)")
            let stream = try await cli(["call", "bad.stream"])
            #expect(stream.err.contains("line that is not JSON") && stream.err.contains("restarted"), "\(stream.err)")

            // Calling back through the adapter, with the plugin's grants.
            let echoed = try await cli(["call", "bad.echo", "{\"x\": 1}"])
            #expect(echoed.status == .exited(0) && echoed.out.contains("\"x\" : 1"), "\(echoed)")
            let forbidden = try await cli(["call", "bad.forbidden"])
            #expect(forbidden.err.contains("may not call job secret.job"), "\(forbidden.err)")

            // Vetoes, by exit code 3 and by a "veto:" line, end the container.create hook chain.
            let rootfs = try busyboxRootfs(in: dir)
            let sunday = try await cli(["container", "create", "--rootfs", rootfs, "--name", "sunday", "--", "true"])
            #expect(sunday.status != .exited(0) && sunday.err.contains("plugin veto vetoed container.create") && sunday.err.contains("no containers on Sundays"), "\(sunday.err)")
            let other = try await cli(["container", "create", "--rootfs", rootfs, "--name", "other", "--", "true"])
            #expect(other.err.contains("other containers are out"), "\(other.err)")
            let fine = try await cli(["container", "create", "--rootfs", rootfs, "--name", "fine", "--", "true"])
            #expect(fine.status == .exited(0), "\(fine.err)")
        }
        try await stop(daemon)
    }
}
