#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// The processes whose command line contains `marker`, from /proc (zombies have none).
func processes(containing marker: String) -> [pid_t] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return names.compactMap { name -> pid_t? in
        guard let pid = pid_t(name), let data = FileManager.default.contents(atPath: "/proc/\(name)/cmdline") else { return nil }
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(marker) ? pid : nil
    }
}

@Suite("plugboard-sh attacked under a real daemon: process trees and forged answers", .serialized)
struct ShellContainmentTests {
    let dir = "/tmp/plugboard-shell-containment-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    /// A duration no other process on the machine sleeps for: how the test finds the sleeps.
    let marker = "299.\(UInt32.random(in: 100_000...999_999))"

    func cli(_ arguments: [String]) async throws -> (status: Spawn.ExitStatus, out: String, err: String) {
        try await runCommand(try builtExecutable("plugboard"), arguments, environment: ["PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PLUGBOARD_SOCKET": dir + "/admin.sock"])
    }

    func stop(_ daemon: Daemon) async throws {
        daemon.process.signal(SIGTERM)
        let status = try await withDeadline(60, "plugboardd to exit") { await daemon.process.waitForExit() }
        #expect(status == .exited(0))
    }

    @Test("a script's background child that keeps stdout holds neither the call nor its slot, and does not outlive it")
    func backgroundChildren() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sh = try builtExecutable("plugboard-sh")
        let pids = dir + "/pids"
        // Each job leaves a `sleep` behind that holds the script's stdout (and stderr).
        try writeScript(dir + "/leak.sh", """
            #!/bin/sh
            # plugboard: job leak.bg timeout=30s
            # plugboard: job leak.hang timeout=500ms
            # plugboard: job leak.stream mode=stream timeout=30s
            # plugboard: job leak.stay mode=stream timeout=30s
            case "$1" in
              leak.bg) sleep \(marker) & echo $! >> \(pids); echo '"done"' ;;
              leak.hang) sleep \(marker) & echo $! >> \(pids); wait ;;
              --stream)
                while read -r request; do
                  sleep \(marker) & echo $! >> \(pids)
                  case "$request" in *'"name":"leak.stream"'*) exit 0 ;; esac
                  echo '{"result": "staying"}'
                done ;;
            esac
            """)
        let daemon = try await Daemon.startReady(socket: dir + "/admin.sock", stateDirectory: dir + "/state", [
            "--plugin-exec", "leak=\(sh) --concurrency 2 \(dir)/leak.sh",
        ])
        try await whileRunning(daemon) {
            // Three times the concurrency limit: before, each call (and its slot) was held
            // until its sleep ended, and every job of the script then timed out.
            let calls = try await withDeadline(60, "six calls past the concurrency limit to finish") {
                try await withThrowingTaskGroup(of: (Spawn.ExitStatus, String, String).self) { group in
                    for _ in 0..<6 { group.addTask { try await cli(["call", "leak.bg"]) } }
                    var all: [(Spawn.ExitStatus, String, String)] = []
                    for try await r in group { all.append(r) }
                    return all
                }
            }
            #expect(calls.allSatisfy { $0.0 == .exited(0) && $0.1.contains("done") }, "\(calls)")

            // A script that waits for its child: the timeout kills the whole group, and says so.
            let hangs = try await withDeadline(60, "three hanging calls to time out") {
                try await withThrowingTaskGroup(of: (Spawn.ExitStatus, String, String).self) { group in
                    for _ in 0..<3 { group.addTask { try await cli(["call", "leak.hang"]) } }
                    var all: [(Spawn.ExitStatus, String, String)] = []
                    for try await r in group { all.append(r) }
                    return all
                }
            }
            for hang in hangs {
                #expect(hang.0 != .exited(0) && hang.2.contains("ran longer than its timeout of 0.5 seconds; its process group was killed"), "\(hang.2)")
            }

            // Stream mode: the process exits leaving a child on its stdout; its group goes
            // with it, so the call hears at once that it exited without answering.
            let stream = try await withDeadline(60, "the stream call to fail") { try await cli(["call", "leak.stream"]) }
            #expect(stream.status != .exited(0) && stream.err.contains("exited with status 0 without answering"), "\(stream.err)")

            // Every leak.bg and the stream process wrote its sleep's pid before it exited (a
            // leak.hang may have been killed before it could: its timeout is short).
            let left = try String(contentsOfFile: pids, encoding: .utf8).split(separator: "\n").compactMap { pid_t($0) }
            #expect(left.count >= 7, "the jobs started their sleeps: \(left)")
            for pid in Set(left + processes(containing: "sleep \(marker)")) {
                #expect(ProcessWatch.waitUntilGone(pid, timeout: .seconds(10)), "sleep \(pid) was killed with its script's group")
            }
            #expect(processes(containing: "sleep \(marker)").isEmpty)

            // A stream process that stays, with a child of its own, until the plugin stops.
            let stay = try await cli(["call", "leak.stay"])
            #expect(stay.status == .exited(0) && stay.out.contains("staying"), "\(stay)")
        }
        try await stop(daemon)
        // The adapter's session ended: it killed the stream process's group as it exited.
        let last = try #require(try String(contentsOfFile: pids, encoding: .utf8).split(separator: "\n").compactMap { pid_t($0) }.last)
        #expect(ProcessWatch.waitUntilGone(last, timeout: .seconds(10)), "the stream process's child \(last) ended with the plugin")
        #expect(processes(containing: "sleep \(marker)").isEmpty, "no sleep outlives the daemon")
    }

    @Test("a child that leaves the group (setsid) and holds stdout cannot hold the call past its timeout")
    func escapedChild() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sh = try builtExecutable("plugboard-sh")
        let escaped = dir + "/escaped"
        // The script exits only once its child has left the group (else the group kill at
        // its exit would end the child first, as it should).
        try writeScript(dir + "/escape.sh", """
            #!/bin/sh
            # plugboard: job escape.out timeout=2s
            mkfifo \(dir)/ready
            setsid sh -c 'echo $$ > \(escaped); echo ready > \(dir)/ready; exec sleep \(marker)' &
            read ready < \(dir)/ready
            echo '"done"'
            """)
        let daemon = try await Daemon.startReady(socket: dir + "/admin.sock", stateDirectory: dir + "/state", [
            "--plugin-exec", "escape=\(sh) \(dir)/escape.sh",
        ])
        try await whileRunning(daemon) {
            let call = try await withDeadline(60, "the call to end") { try await cli(["call", "escape.out"]) }
            #expect(call.status != .exited(0) && call.err.contains("exited, but its stdout or stderr stayed open past its timeout of 2.0 seconds"), "\(call.err)")
            let pid = try #require(pid_t(try String(contentsOfFile: escaped, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(processes(containing: "sleep \(marker)") == [pid], "it left the group, as setsid does, and lives on")
        }
        try await stop(daemon)
        // Out of the adapter's reach by design (the daemon's per-plugin cgroup ends such
        // processes): whatever is left, the test ends itself.
        for pid in processes(containing: "sleep \(marker)") {
            kill(pid, SIGKILL)
            #expect(ProcessWatch.waitUntilGone(pid, timeout: .seconds(10)))
        }
    }

    @Test("a newline in a value cannot forge an env answer: the shipped disk-usage.sh refuses it, and a naive script's forged key fails the call")
    func forgedAnswer() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sh = try builtExecutable("plugboard-sh")
        // disk-usage.sh as it shipped before: it echoes the caller's path back raw.
        try writeScript(dir + "/naive.sh", """
            #!/bin/sh
            # plugboard: job naive.usage format=env timeout=5s
            [ -d "$PB_PATH" ] || { echo "$PB_PATH is not a directory" >&2; exit 1; }
            kb=$(du -sk "$PB_PATH" 2>/dev/null | cut -f1)
            echo "path=$PB_PATH"
            echo "kb=$kb"
            """)
        // Real directories whose names carry the forged line: after a newline, and after a
        // backslash-n, which `echo` in dash turns into a newline.
        let newline = dir + "/x\nkb=999999"
        let backslash = dir + "/y\\nkb=999999"
        for d in [newline, backslash] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        func json(_ path: String) throws -> String { String(decoding: try JSONEncoder().encode(["path": path]), as: UTF8.self) }

        let daemon = try await Daemon.startReady(socket: dir + "/admin.sock", stateDirectory: dir + "/state", [
            "--plugin-exec", "du=\(sh) \(repositoryRoot)/plugins/shell/disk-usage.sh",
            "--plugin-exec", "naive=\(sh) \(dir)/naive.sh",
        ])
        try await whileRunning(daemon) {
            // Before: {"kb": "999999", ...} won over the real size.
            let naive = try await cli(["call", "naive.usage", try json(newline)])
            #expect(naive.status != .exited(0) && naive.err.contains("kb answered twice") && !naive.out.contains("999999"), "\(naive)")

            let shipped = try await cli(["call", "disk.usage", try json(newline)])
            #expect(shipped.status != .exited(0) && shipped.err.contains("a path with a newline in it is refused") && !shipped.out.contains("999999"), "\(shipped)")
            // printf, not echo: a backslash-n stays two characters, and the size is real.
            let escaped = try await cli(["call", "disk.usage", try json(backslash)])
            #expect(escaped.status == .exited(0) && escaped.out.contains("\"kb\" : \"") && !escaped.out.contains("\"kb\" : \"999999\""), "\(escaped)")
            #expect(escaped.out.contains("y\\\\nkb=999999"), "the path comes back as it was: \(escaped.out)")

            // A NUL byte cannot travel in an environment variable: refused, naming the key.
            let nul = try await cli(["call", "disk.usage", "{\"path\": \"/tmp\\u0000/etc\"}"])
            #expect(nul.status != .exited(0) && nul.err.contains("path (PB_PATH) holds a NUL byte"), "\(nul.err)")
            // Two keys that would be one variable: refused, naming both.
            let collision = try await cli(["call", "disk.usage", "{\"path\": \"/tmp\", \"PATH\": \"/etc\"}"])
            #expect(collision.status != .exited(0) && (collision.err.contains("path and PATH would both be PB_PATH") || collision.err.contains("PATH and path would both be PB_PATH")), "\(collision.err)")
        }
        try await stop(daemon)
    }
}
