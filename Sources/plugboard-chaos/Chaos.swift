#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import AdminProtocol
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import Spawn

/// `plugboard-chaos`: plugboardd with exec and container plugins under steady call load
/// from several clients while a loop hurts random plugins (SIGKILL, SIGSTOP past the call
/// timeout, closing fd 4, garbage on fd 4, descendants that double-fork and setsid away,
/// channels opened without end, oversized events, a flood of admin connections). Then it
/// accounts for everything, removes the exec plugins and prints
///   calls=N ok=N errors=N hung=0 leaked_fds=0 zombies=0 stray_containers=0 rss_growth_pct=X orphans=0 rss_after_pct=Y
/// exiting non-zero if any promise was broken.
@main
struct Chaos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugboard-chaos",
        abstract: "Hurt plugins under load and account for every call, fd, process and container afterwards.",
        discussion: "Needs root and runc for the container plugins (make chaos builds the bundle). The binaries it starts sit next to it."
    )

    @Option(help: "Seconds of chaos.") var seconds: Double = 60
    @Option(help: "Clients calling at once.") var clients: Int = 4
    @Option(help: "Exec plugins.") var execPlugins: Int = 3
    @Option(help: "Container plugins (0 without runc).") var containerPlugins: Int = 2
    @Option(help: "A container bundle whose rootfs can run plugboard-test-plugin's libraries (the label bundle).") var bundle: String = ".build/plugins/label"
    @Option(help: "Milliseconds between two hurts.") var hurtEveryMs: Int = 300
    @Option(help: "A call's deadline in the daemon, in milliseconds.") var callTimeoutMs: Int = 2000

    func run() async throws {
        let dir = "/tmp/plugboard-chaos-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bin = (selfPath() as NSString).deletingLastPathComponent
        let testPlugin = bin + "/plugboard-test-plugin"
        var arguments = ["--admin-socket", dir + "/admin.sock", "--state-dir", dir + "/state", "--plugin", "echo", "--shutdown-grace", "2",
                         "--log-level", ProcessInfo.processInfo.environment["PLUGBOARD_CHAOS_LOG_LEVEL"] ?? "error"]
        var names: [String] = []
        for i in 1...max(1, execPlugins) {
            names.append("x\(i)")
            arguments += ["--plugin-exec", "x\(i)=\(testPlugin) provides=x\(i).work"]
        }
        // A hostile plugin that opens channels without end (refused past its cap).
        arguments += ["--plugin-exec", "flooder=\(bin)/plugboard-test-peer open-flood"]
        if containerPlugins > 0 {
            let chaosBundle = try makeBundle(from: bundle, plugin: testPlugin, in: dir)
            for i in 1...containerPlugins {
                // Each container plugin needs its own bundle: its name goes into its arguments.
                let b = dir + "/bundle-c\(i)"
                try FileManager.default.createDirectory(atPath: b, withIntermediateDirectories: true)
                try FileManager.default.createSymbolicLink(atPath: b + "/rootfs", withDestinationPath: chaosBundle + "/rootfs")
                try #"{"entrypoint": ["/plugin/plugboard-test-plugin", "provides=c\#(i).work"]}"#.write(toFile: b + "/plugin.json", atomically: true, encoding: .utf8)
                names.append("c\(i)")
                arguments += ["--plugin-container", "c\(i)=\(b)"]
            }
        }
        let err = try PipeDescriptors.make()
        let daemon = try ProcessSpawner.spawn(SpawnOptions(
            executable: bin + "/plugboardd", arguments: arguments,
            environment: ProcessInfo.processInfo.environment, fileDescriptors: [2: err.writeEnd]
        ))
        close(err.writeEnd)
        let daemonLog = OutputBuffer()
        Foundation.Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(err.readEnd, &buffer, buffer.count)
                if n <= 0 { break }
                daemonLog.append(Array(buffer[0..<n]))
            }
            close(err.readEnd)
        }
        let admin = try await connect(dir + "/admin.sock", daemon: daemon)
        defer { admin.session.close(reason: "done") }
        try await waitAllActive(admin.channel, names, deadline: .seconds(60))
        // Chaos hurts each plugin far more often than a real crash loop: keep them in play
        // (as an operator would for a flaky plugin) with a short backoff.
        for name in names {
            let settings = Admin.PluginSet(name: name, settings: ["crash-loop-restarts": "1000000", "backoff-initial": "50ms", "backoff-max": "500ms"])
            _ = try await admin.channel.request(try settings.wireBody(), timeout: .seconds(10))
        }
        let jobs = ["echo"] + names.map { "\($0).work" }

        // Warm up — calls, one restart of each plugin, a call past its deadline — so that
        // what the daemon makes once (timers, the restart path's buffers) is in the baseline.
        for i in 0..<200 { _ = try? await call(admin.channel, jobs[i % jobs.count], .int(Int64(i))) }
        for name in names {
            if let pid = await pluginProcess(admin.channel, name, daemon: daemon.pid) { kill(pid, SIGKILL) }
        }
        _ = try? await call(admin.channel, "\(names[0]).hang", .nil, timeoutMs: 100)
        // And once each of the new hurts, so that what they make once (the event history,
        // the refusal paths, the sessions' first big buffers) is in the baseline too.
        _ = try? await call(admin.channel, "flooder.open-flood", .fields(("count", 3000)), timeoutMs: 10000)
        await floodAdmin(dir + "/admin.sock", connections: 200)
        let warmBig = Value.string(String(repeating: "e", count: 512 << 10))
        _ = try? await call(admin.channel, "\(names[0]).call", .fields(("job", "events.publish"), ("argument", .fields(("type", "chaos.big"), ("attributes", .fields(("blob", warmBig)))))), timeoutMs: 2000)
        for i in 0..<1100 { _ = try? await call(admin.channel, "\(names[0]).call", .fields(("job", "events.publish"), ("argument", .fields(("type", "chaos.warm"), ("attributes", .fields(("i", .int(Int64(i)))))))), timeoutMs: 2000) }
        try await waitAllActive(admin.channel, names, deadline: .seconds(60))
        for i in 0..<200 { _ = try? await call(admin.channel, jobs[i % jobs.count], .int(Int64(i))) }
        let baselineFDs = ProcessTable.openDescriptors(daemon.pid)
        let baselineKinds = ProcessTable.descriptorKinds(daemon.pid)
        let baselineRSS = ProcessTable.residentBytes(daemon.pid)

        // Load.
        let tally = Tally()
        let stop = NIOLockedValueBox(false)
        var loaders: [Task<Void, Never>] = []
        for c in 0..<clients {
            let connection = try await connect(dir + "/admin.sock", daemon: daemon)
            loaders.append(Task {
                defer { connection.session.close(reason: "done") }
                var i = c
                while !stop.withLockedValue({ $0 }) {
                    let job = jobs[i % jobs.count]
                    i += 1
                    await measure(connection.channel, job, tally: tally)
                }
            })
        }

        // Hurt.
        var hurts: [String: Int] = [:]
        let end = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        var stopped: [(pid_t, ContinuousClock.Instant)] = []
        while ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(hurtEveryMs))
            // Continue what was stopped long enough (past the call timeout).
            let now = ContinuousClock.now
            for (pid, until) in stopped where until <= now { kill(pid, SIGCONT) }
            stopped.removeAll { $0.1 <= now }
            guard let victim = names.randomElement(), let pid = await pluginProcess(admin.channel, victim, daemon: daemon.pid) else { continue }
            switch Int.random(in: 0..<8) {
            case 4 where victim.hasPrefix("x"):
                // Leaves a setsid, a double-forked and an fd-keeping descendant behind: they
                // must end with the plugin (its cgroup), whenever that is.
                _ = try? await call(admin.channel, "\(victim).spawn", .fields(("command", .string(escapingCommand(marker)))), timeoutMs: 1000)
                hurts["double_fork", default: 0] += 1
            case 4, 5:
                // Opens channels to the daemon without end: refused past the per-session cap.
                _ = try? await call(admin.channel, "flooder.open-flood", .fields(("count", 3000)), timeoutMs: 10000)
                hurts["channel_flood", default: 0] += 1
            case 6:
                // Publishes events far over the size cap: each refused, none kept.
                let big = Value.string(String(repeating: "e", count: 512 << 10))
                for _ in 0..<4 {
                    _ = try? await call(admin.channel, "\(victim).call", .fields(("job", "events.publish"), ("argument", .fields(("type", "chaos.big"), ("attributes", .fields(("blob", big)))))), timeoutMs: 2000)
                }
                hurts["oversized_event", default: 0] += 1
            case 7:
                // A local user floods the admin socket: connections opened and dropped.
                await floodAdmin(dir + "/admin.sock", connections: 200)
                hurts["socket_flood", default: 0] += 1
            case 0:
                kill(pid, SIGKILL)
                hurts["sigkill", default: 0] += 1
            case 1:
                kill(pid, SIGSTOP)
                stopped.append((pid, now + .milliseconds(Int64(callTimeoutMs + 1000))))
                hurts["sigstop", default: 0] += 1
            case 2:
                _ = try? await call(admin.channel, "\(victim).close4", .nil, timeoutMs: 1000)
                hurts["close_fd4", default: 0] += 1
            default:
                _ = try? await call(admin.channel, "\(victim).garbage", .nil, timeoutMs: 1000)
                hurts["garbage", default: 0] += 1
            }
        }
        for (pid, _) in stopped { kill(pid, SIGCONT) }
        stop.withLockedValue { $0 = true }
        for l in loaders { await l.value }

        // Settle: every plugin active again (the crash-loop limit may have failed some:
        // restart those, as an operator would), then the accounting.
        for name in names {
            if let row = try? await pluginRow(admin.channel, name), row.state == "failed" {
                _ = try? await admin.channel.request(try Admin.PluginRestart(name: name).wireBody(), timeout: .seconds(30))
            }
        }
        try await waitAllActive(admin.channel, names, deadline: .seconds(60))
        for i in 0..<200 { _ = try? await call(admin.channel, jobs[i % jobs.count], .int(Int64(i))) }
        let afterFDs = ProcessTable.openDescriptors(daemon.pid)
        let afterKinds = ProcessTable.descriptorKinds(daemon.pid)
        let changed = Set(baselineKinds.keys).union(afterKinds.keys).filter { baselineKinds[$0] != afterKinds[$0] }
        if !changed.isEmpty {
            print("descriptors that changed: " + changed.sorted().map { "\($0) \(baselineKinds[$0] ?? 0)→\(afterKinds[$0] ?? 0)" }.joined(separator: ", "))
        }
        let afterRSS = ProcessTable.residentBytes(daemon.pid)
        // The plugins go; their memory must go with them.
        for name in names where name.hasPrefix("x") {
            _ = try? await admin.channel.request(try Admin.PluginRemove(name: name, force: true).wireBody(), timeout: .seconds(30))
        }
        let goneRSS = ProcessTable.residentBytes(daemon.pid)
        let leftByRemoved = processes(holding: marker).count
        let table = ProcessTable.all()
        let family = ProcessTable.descendants(of: daemon.pid, in: table)
        let zombies = family.filter { $0.state == "Z" }.count
        let runcRoot = dir + "/state/runc"
        let runningContainers = await runcList(runcRoot)
        let expected = Set((1...max(1, containerPlugins)).map { "plugin-c\($0)" }).filter { _ in containerPlugins > 0 }
        let strayWhileRunning = runningContainers.filter { !expected.contains($0) }.count

        // Shutdown: nothing may be left behind.
        daemon.signal(SIGTERM)
        let status = await daemon.waitForExit()
        let orphans = ProcessTable.all().filter { $0.commandLine.contains(dir) || $0.commandLine.contains("plugboard-test-plugin provides=x") } + processes(holding: marker)
        let strayAfter = await runcList(runcRoot).count
        let leakedFDs = max(0, afterFDs - baselineFDs)
        let growth = baselineRSS > 0 ? Double(afterRSS - baselineRSS) * 100 / Double(baselineRSS) : 0
        let afterGone = baselineRSS > 0 ? Double(goneRSS - baselineRSS) * 100 / Double(baselineRSS) : 0
        let t = tally.snapshot
        print("hurts: " + hurts.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        print("errors by cause: " + t.causes.sorted { $0.value > $1.value }.prefix(8).map { "\($0.value)× \($0.key)" }.joined(separator: "; "))
        print("fds \(baselineFDs)→\(afterFDs), rss \(baselineRSS >> 20)→\(afterRSS >> 20) MiB, \(goneRSS >> 20) MiB once the exec plugins were removed, plugboardd \(status), descendants left by removed plugins \(leftByRemoved), orphans after exit \(orphans.count), containers after exit \(strayAfter)")
        let summary = String(format: "calls=%d ok=%d errors=%d hung=%d leaked_fds=%d zombies=%d stray_containers=%d rss_growth_pct=%.1f orphans=%d rss_after_pct=%.1f",
                             t.calls, t.ok, t.errors, t.hung, leakedFDs, zombies, strayWhileRunning + strayAfter, growth, orphans.count + leftByRemoved, afterGone)
        print(summary)
        let broken = t.hung > 0 || t.unexplained > 0 || leakedFDs > 0 || zombies + orphans.count + leftByRemoved > 0 || strayWhileRunning + strayAfter > 0
            || growth > 10 || afterGone > 10 || status != .exited(0)
        if t.unexplained > 0 { print("errors without a cause: \(t.unexplained)") }
        if let path = ProcessInfo.processInfo.environment["PLUGBOARD_CHAOS_LOG"] { try? daemonLog.text.write(toFile: path, atomically: true, encoding: .utf8) }
        if broken {
            FileHandle.standardError.write(Data(daemonLog.text.suffix(4000).utf8))
            throw ExitCode(1)
        }
    }

    /// Marks the descendants chaos makes plugins leave behind.
    var marker: String { "9\(getpid() % 100_000)" }

    /// A command leaving three descendants holding `marker`: setsid, double-forked, background.
    func escapingCommand(_ marker: String) -> String {
        "setsid sleep 4321.\(marker) & (sleep 4322.\(marker) &) ; sleep 4323.\(marker) &"
    }

    /// Processes whose command line holds `marker`.
    func processes(holding marker: String) -> [ProcessInfoEntry] {
        ProcessTable.all().filter { $0.commandLine.contains("432") && $0.commandLine.contains("." + marker) }
    }

    /// Opens and drops `connections` admin connections at once, as a local user flooding the socket would.
    func floodAdmin(_ socket: String, connections: Int) async {
        var fds: [Int32] = []
        for _ in 0..<connections {
            let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { break }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (i, b) in socket.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
            }
            let ok = withUnsafePointer(to: &address) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if ok == 0 { fds.append(fd) } else { close(fd) }
        }
        for fd in fds { close(fd) }
    }

    // MARK: Calls

    struct Connection {
        let session: Session
        let channel: Sender
    }

    func connect(_ socket: String, daemon: SpawnedProcess) async throws -> Connection {
        let logger = Logger(label: "chaos", factory: { _ in SwiftLogNoOpLogHandler() })
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            // The socket appears once the daemon has booted; a connection refused before that is retried.
            if access(socket, F_OK) == 0, let session = try? await Session.connect(unixSocketPath: socket, configuration: .init(name: "chaos"), logger: logger) {
                try await session.start()
                return Connection(session: session, channel: try session.open(label: "admin"))
            }
            if daemon.exitStatus != nil { throw ValidationError("plugboardd \(daemon.exitStatus.map { "\($0)" } ?? "") before it was ready") }
            if ContinuousClock.now > deadline { throw ValidationError("plugboardd did not open \(socket) within 60 s") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func call(_ channel: Sender, _ job: String, _ argument: Value, timeoutMs: Int? = nil) async throws -> Value {
        let ms = timeoutMs ?? callTimeoutMs
        return try await channel.request(
            try Admin.Call(job: job, argument: argument, timeoutMilliseconds: Int64(ms)).wireBody(),
            // The daemon must answer by its deadline; we allow 5 s more before calling it hung.
            timeout: .milliseconds(Int64(ms) + 5000)
        )
    }

    func measure(_ channel: Sender, _ job: String, tally: Tally) async {
        let value = Value.int(Int64.random(in: 0...1_000_000))
        do {
            let answer = try await call(channel, job, value)
            if answer == value { tally.ok() } else { tally.error("wrong answer from \(job): \(answer)", explained: false) }
        } catch let error as ChanError where error.code == .timeout {
            tally.hung(job)
        } catch let error as ChanError {
            // The daemon's error must say what happened: a cause, not just a code.
            let text = error.reason
            let explained = text.count > 10 && (text.contains("plugin") || text.contains("timed out") || text.contains("deadline") || text.contains("job"))
            tally.error(Self.cause(text), explained: explained)
        } catch {
            tally.error("\(error)", explained: false)
        }
    }

    /// An error's text with the numbers taken out, to group causes.
    static func cause(_ text: String) -> String {
        String(text.map { $0.isNumber ? "#" : $0 }).replacingOccurrences(of: "##", with: "#").prefix(90).description
    }

    func pluginRows(_ channel: Sender) async throws -> [Admin.PluginRow] {
        try Admin.PluginList.decodeReply(try await channel.request(try Admin.PluginList().wireBody(), timeout: .seconds(10)))
    }

    func pluginRow(_ channel: Sender, _ name: String) async throws -> Admin.PluginRow? {
        try await pluginRows(channel).first { $0.name == name }
    }

    func waitAllActive(_ channel: Sender, _ names: [String], deadline: Duration) async throws {
        let end = ContinuousClock.now + deadline
        while ContinuousClock.now < end {
            let rows = (try? await pluginRows(channel)) ?? []
            let active = Set(rows.filter { $0.state == "active" }.map(\.name))
            if names.allSatisfy(active.contains) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("plugins did not all become active within \(deadline)")
    }

    /// The process to hurt: an exec plugin's own pid; for a container plugin, the
    /// plugin inside (runc's child).
    func pluginProcess(_ channel: Sender, _ name: String, daemon: pid_t) async -> pid_t? {
        guard let row = try? await pluginRow(channel, name), row.state == "active", let pid = row.pid else { return nil }
        if name.hasPrefix("c") { return ProcessWatch.children(of: pid_t(pid)).first }
        return pid_t(pid)
    }

    func runcList(_ root: String) async -> [String] {
        let out = try? PipeDescriptors.make()
        guard let out, let p = try? ProcessSpawner.spawn(SpawnOptions(executable: "runc", arguments: ["--root", root, "list", "--quiet"], environment: ProcessInfo.processInfo.environment, fileDescriptors: [1: out.writeEnd])) else { return [] }
        close(out.writeEnd)
        var all: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(out.readEnd, &buffer, buffer.count)
            if n <= 0 { break }
            all += buffer[0..<n]
        }
        close(out.readEnd)
        _ = await p.waitForExit()
        return String(decoding: all, as: UTF8.self).split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    }

    /// A bundle whose rootfs is the label bundle's plus plugboard-test-plugin (same libraries).
    func makeBundle(from source: String, plugin: String, in dir: String) throws -> String {
        let out = dir + "/chaos-bundle"
        let rootfs = URL(fileURLWithPath: source + "/rootfs").resolvingSymlinksInPath().path
        guard FileManager.default.fileExists(atPath: rootfs + "/plugin") else {
            throw ValidationError("\(source) is not a built label bundle: run make bundles first")
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: rootfs, toPath: out + "/rootfs")
        try? FileManager.default.removeItem(atPath: out + "/rootfs/plugin/plugboard-test-plugin")
        try FileManager.default.copyItem(atPath: plugin, toPath: out + "/rootfs/plugin/plugboard-test-plugin")
        return out
    }
}

/// Counts of call outcomes, from several clients.
final class Tally: Sendable {
    struct Snapshot {
        var calls = 0, ok = 0, errors = 0, hung = 0, unexplained = 0
        var causes: [String: Int] = [:]
    }

    private let state = NIOLockedValueBox(Snapshot())
    var snapshot: Snapshot { state.withLockedValue { $0 } }

    func ok() { state.withLockedValue { $0.calls += 1; $0.ok += 1 } }
    func hung(_ job: String) { state.withLockedValue { $0.calls += 1; $0.hung += 1; $0.causes["HUNG \(job)", default: 0] += 1 } }
    func error(_ cause: String, explained: Bool) {
        state.withLockedValue { s in
            s.calls += 1
            s.errors += 1
            if !explained { s.unexplained += 1 }
            s.causes[cause, default: 0] += 1
        }
    }
}

final class OutputBuffer: Sendable {
    private let bytes = NIOLockedValueBox<[UInt8]>([])
    func append(_ chunk: [UInt8]) { bytes.withLockedValue { $0 += chunk } }
    var text: String { String(decoding: bytes.withLockedValue { $0 }, as: UTF8.self) }
}

func selfPath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return CommandLine.arguments[0] }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
