#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import Spawn

/// runc, run with Plugboard's own `--root` so that its containers never appear in the
/// user's `runc list`, and started through `plugboard-exec-shim` (when there is one) so
/// that runc gets SIGKILL if plugboardd dies.
public struct Runc: Sendable {
    /// The runc binary.
    public var executable: String
    /// runc's state directory (`runc --root`).
    public var root: String
    /// `plugboard-exec-shim`, which sets the parent-death signal before exec.
    public var shim: String?

    /// runc at `executable`, with its state under `root`, started through `shim` when given.
    public init(executable: String, root: String, shim: String?) {
        self.executable = executable
        self.root = root
        self.shim = shim
    }

    /// Finds runc in `PATH`; the error says how to install it.
    public static func find(root: String, shim: String?) throws -> Runc {
        let env = ProcessInfo.processInfo.environment
        guard let path = try? ProcessSpawner.resolve("runc", environment: env) else {
            throw ContainerError(.runtime, "runc is not installed (not found in PATH): install Debian's runc package (make deps does) to run containers")
        }
        return Runc(executable: path, root: root, shim: shim)
    }

    /// What to spawn for `runc run` of `bundle` as `id`, handing fds 3...2+preserveFDs in.
    public func runCommand(id: String, bundle: String, preserveFDs: Int = 0) -> (executable: String, arguments: [String]) {
        var args = ["--root", root, "run", "--bundle", bundle]
        if preserveFDs > 0 { args += ["--preserve-fds", String(preserveFDs)] }
        args.append(id)
        if let shim { return (shim, [String(getpid()), executable] + args) }
        return (executable, args)
    }

    /// The container ids in Plugboard's runc root.
    public func list() async throws -> [String] {
        let r = try await run(["list", "--quiet"])
        guard r.status.isSuccess else { throw ContainerError(.runtime, "runc list failed: \(r.stderr)") }
        return r.stdout.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    }

    /// Sends `signal` (a name such as "TERM" or "KILL") to the container's processes.
    public func kill(_ id: String, signal: String) async {
        _ = try? await run(["kill", "--all", id, signal])
    }

    /// Removes the container from runc's state, killing it first if it still runs.
    /// A container that does not exist (runc run already removed it) is fine.
    @discardableResult
    public func delete(_ id: String) async -> Bool {
        guard let r = try? await run(["delete", "--force", id]) else { return false }
        return r.status.isSuccess || r.stderr.contains("does not exist") || r.stderr.contains("not exist")
    }

    /// The host pid of the container's first process, while it runs.
    public func pid(_ id: String) async -> pid_t? {
        guard let r = try? await run(["state", id]), r.status.isSuccess,
              let object = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let pid = object["pid"] as? Int, pid > 0 else { return nil }
        return pid_t(pid)
    }

    /// Deletes every container in Plugboard's runc root (what a killed daemon left behind).
    @discardableResult
    public func removeAll(logger: Logger) async -> [String] {
        guard let ids = try? await list() else { return [] }
        for id in ids {
            logger.warning("removing a container left behind by an earlier plugboardd", metadata: ["container.id": "\(id)"])
            await delete(id)
        }
        return ids
    }

    /// Runs `runc --root ROOT ARGS` to completion and collects what it printed.
    func run(_ arguments: [String]) async throws -> (status: ExitStatus, stdout: String, stderr: String) {
        let out = try PipeDescriptors.make()
        let err = try PipeDescriptors.make()
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(SpawnOptions(
                executable: executable, arguments: ["--root", root] + arguments,
                environment: ProcessInfo.processInfo.environment,
                fileDescriptors: [1: out.writeEnd, 2: err.writeEnd]
            ))
        } catch {
            for fd in [out.readEnd, out.writeEnd, err.readEnd, err.writeEnd] { close(fd) }
            throw ContainerError(.runtime, "cannot start runc: \(error)")
        }
        close(out.writeEnd)
        close(err.writeEnd)
        let stdout = NIOLockedValueBox<[UInt8]>([])
        let stderr = NIOLockedValueBox<[UInt8]>([])
        async let o: Void = PipeReader.read(fd: out.readEnd) { c in stdout.withLockedValue { $0 += c } }
        async let e: Void = PipeReader.read(fd: err.readEnd) { c in stderr.withLockedValue { $0 += c } }
        _ = try? await (o, e)
        let status = await process.waitForExit()
        return (
            status,
            String(decoding: stdout.withLockedValue { $0 }, as: UTF8.self),
            String(decoding: stderr.withLockedValue { $0 }, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        )
    }
}
