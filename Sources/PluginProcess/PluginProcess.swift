#if canImport(Glibc)
import Glibc
#endif
import Chan
import Logging
import Spawn

/// A child process and the session on its fds 3 and 4.
public struct PluginProcess: Sendable {
    /// The engine's end of the session (initiator), not yet started.
    public let session: Session
    /// The child.
    public let process: SpawnedProcess

    /// Starts `executable` with its session on fds 3 (it reads) and 4 (it writes) and
    /// returns our end, not yet started. The child's stdin is /dev/null; `extraDescriptors`
    /// maps more child fds (1 and 2 for its output, say).
    public static func launch(
        executable: String,
        arguments: [String] = [],
        environment: [String: String],
        extraDescriptors: [CInt: CInt] = [:],
        configuration: Session.Configuration,
        logger: Logger
    ) async throws -> PluginProcess {
        let toChild = try PipeDescriptors.make()
        let fromChild = try PipeDescriptors.make()
        var fds = extraDescriptors
        fds[3] = toChild.readEnd
        fds[4] = fromChild.writeEnd
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(
                SpawnOptions(executable: executable, arguments: arguments, environment: environment, fileDescriptors: fds),
                logger: logger
            )
        } catch {
            for fd in [toChild.readEnd, toChild.writeEnd, fromChild.readEnd, fromChild.writeEnd] { Glibc.close(fd) }
            throw error
        }
        // The child has its copies; ours of its ends would keep the pipes open after it dies.
        Glibc.close(toChild.readEnd)
        Glibc.close(fromChild.writeEnd)
        let session = try await Session.overFileDescriptors(
            read: fromChild.readEnd, write: toChild.writeEnd, role: .initiator, configuration: configuration, logger: logger
        )
        return PluginProcess(session: session, process: process)
    }
}
