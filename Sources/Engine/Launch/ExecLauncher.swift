#if canImport(Glibc)
import Glibc
#endif
import AdminProtocol
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import PluginProcess
import Routing
import Spawn

/// A subprocess plugin: the command with its session on fds 3/4, started through
/// `plugboard-exec-shim` (the parent-death signal) when the shim is there.
struct ExecLauncher: PluginLauncher {
    let command: String
    let arguments: [String]
    let engine: EngineParts

    func launch(_ request: LaunchRequest) async throws -> LaunchedPlugin {
        var environment = ProcessInfo.processInfo.environment
        environment.merge(pluginEnvironment(request)) { _, ours in ours }
        // The shim joins the plugin's cgroups from inside, before exec: nothing the plugin
        // forks can start outside them.
        let joins = (request.cgroup?.procsFiles ?? []).flatMap { ["--cgroup-procs", $0] }
        // A bare `plugboard-plugin-NAME` is found where plugins are installed too
        // (libexec/plugboard/plugins), not only on PATH.
        var command = self.command
        if !command.contains("/"), command.hasPrefix(PluginSearchPath.executablePrefix),
           let found = PluginSearchPath.forThisProcess().find(String(command.dropFirst(PluginSearchPath.executablePrefix.count))) {
            command = found
        }
        let (executable, argv): (String, [String]) = engine.shimPath.map { ($0, joins + [String(getpid()), command] + arguments) } ?? (command, arguments)
        return try await startPluginProcess(
            request, executable: executable, arguments: argv, environment: environment, what: command, engine: engine
        )
    }
}

/// The largest frame a plugin may send plugboardd (its HELLO says so): big data goes as
/// byte streams in 64 KiB chunks, and this bounds what one frame can cost.
let maxFrameFromPlugin = 1 << 20

/// Starts a process with its session on fds 3/4 and its output in the log, and waits for
/// its HELLO: the declaration. Exec and container plugins both start here.
func startPluginProcess(
    _ request: LaunchRequest, executable: String, arguments: [String], environment: [String: String], what command: String, engine: EngineParts
) async throws -> LaunchedPlugin {
    let logger = {
        var logger = engine.logger
        logger[metadataKey: "plugin.name"] = "\(request.name)"
        return logger
    }()
    let out: PipeDescriptors
    let err: PipeDescriptors
    do {
        out = try PipeDescriptors.make()
        do { err = try PipeDescriptors.make() } catch {
            close(out.readEnd)
            close(out.writeEnd)
            throw error
        }
    } catch let error as SystemError where error.errno == EMFILE || error.errno == ENFILE {
        throw EngineError(.daemonOutOfResources, "plugboardd is out of file descriptors (\(error.errno == EMFILE ? "EMFILE" : "ENFILE")) and cannot start plugin \(request.name); raise its limit (ulimit -n, LimitNOFILE=)")
    }
    let launched: PluginProcess
    do {
        launched = try await PluginProcess.launch(
            executable: executable, arguments: arguments, environment: environment,
            extraDescriptors: [1: out.writeEnd, 2: err.writeEnd],
            configuration: .init(
                name: "plugboardd", maxFrameSize: maxFrameFromPlugin,
                maxChannelsOpenedByPeer: request.spec.limits.channels ?? ResourceLimits.defaultChannels,
                handshakeTimeout: request.spec.startTimeout
            ), logger: logger
        )
    } catch {
        for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] { close(fd) }
        throw EngineError(.startFailed, "plugin \(request.name): cannot start \(command): \(error)")
    }
    close(out.writeEnd)
    close(err.writeEnd)
    if engine.shimPath == nil, let cgroup = request.cgroup {
        // Without the shim the daemon moves the child in: anything it forked before this
        // line is outside the cgroup (the shim exists to close that gap).
        do { try cgroup.join(launched.process.pid) } catch {
            logger.warning("cannot move the plugin into its cgroup", metadata: ["plugin.error": "\(error)"])
        }
    }
    let name = request.name
    let lastErrors = NIOLockedValueBox<[String]>([])
    let stderrDone = ReadinessSignal()
    // One task owns both readers; the run cancels it when it is over.
    let readOut = out.readEnd
    let readErr = err.readEnd
    let output = Task {
        await withDiscardingTaskGroup { group in
            group.addTask { try? await OutputLines.follow(fd: readOut, plugin: name, stream: "stdout", logger: logger) }
            group.addTask {
                try? await OutputLines.follow(fd: readErr, plugin: name, stream: "stderr", logger: logger, recent: lastErrors)
                stderrDone.fire()
            }
        }
    }
    do {
        let hello = try await launched.session.start()
        let description = try PluginDescription(wire: hello.meta, fallbackName: name)
        let runName = request.nameIsKnown ? name : description.name
        let calls = try launched.session.open(label: "calls")
        let process = launched.process
        let session = launched.session
        let participant = Participant.remote(runName, calls: calls) {
            // A plugin cut off for breaking the protocol is then stopped with SIGTERM: the
            // violation is what its callers need to hear, not the signal.
            if let reason = session.closeReason, reason.code == .protocolViolation { return "it broke the protocol (\(reason.reason))" }
            return await process.waitForExit(timeout: .seconds(2)).map { "\($0)" }
        }
        return LaunchedPlugin(
            description: description, participant: participant,
            process: PluginProcessRun(process: launched.process, session: launched.session, output: output), onStop: nil
        )
    } catch {
        launched.session.close(reason: "start failed")
        // Before the kill: was it starved of CPU, or stuck somewhere?
        let snapshot = ProcessSnapshot.of(launched.process.pid)
        launched.process.signal(SIGKILL)
        let status = await launched.process.waitForExit()
        // What it said on stderr as it died (runc's reason, a missing library) is the
        // useful part: wait, briefly, for the pipe to drain.
        _ = await stderrDone.wait(atMost: .seconds(1))
        output.cancel()
        let said = lastErrors.withLockedValue { $0 }
        let lastWords = said.isEmpty ? "" : "; its last words on stderr: \(said.joined(separator: " | "))"
        // No HELLO in time: the daemon killed it for that; say so rather than "killed by signal 9".
        if let chan = error as? ChanError, chan.code == .timeout {
            throw EngineError(.startFailed, "plugin \(name) sent no HELLO within its start timeout (\(request.spec.startTimeout.short)), so it was stopped (\(status))" + (snapshot.map { "; \($0)" } ?? "") + lastWords)
        }
        throw EngineError(.startFailed, "plugin \(name) \(status) before it was ready: \(error)" + lastWords)
    }
}
