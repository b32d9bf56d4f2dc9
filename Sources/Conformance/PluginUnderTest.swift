#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Spawn

/// What to run: a plugin executable and how to start it, as plugboardd would.
public struct PluginCommand: Sendable, Hashable {
    /// The executable: a path, or a bare name looked up in `PATH`.
    public var executable: String
    /// Its arguments.
    public var arguments: [String]
    /// `PLUGBOARD_PLUGIN_NAME`, as plugboardd sets it for `NAME=`; absent when nil.
    public var name: String?
    /// `PLUGBOARD_OPTIONS`, the plugin's option string.
    public var options: String

    /// A plugin started as `executable arguments...`.
    public init(executable: String, arguments: [String] = [], name: String? = nil, options: String = "") {
        self.executable = executable
        self.arguments = arguments
        self.name = name
        self.options = options
    }

    /// The command line, for reports.
    public var commandLine: [String] { [executable] + arguments }
}

/// One run of the plugin: the child process with its session on fds 3 (it reads) and 4
/// (it writes), as plugboardd starts an exec plugin, and the raw bytes both ways.
///
/// The kit reads and writes frames itself, byte for byte, rather than through a
/// `Session`: it must see what the plugin sends exactly and send it what a session never
/// would.
final class PluginUnderTest: Sendable {
    let process: SpawnedProcess
    private let channel: any Channel
    /// Chunks of the plugin's fd 4, then the end of the stream.
    let output: AsyncStream<[UInt8]>
    private let stderrLines: NIOLockedValueBox<[String]>
    private let stderrDone: NIOLockedValueBox<Bool>
    private let stderrTask: NIOLockedValueBox<Task<Void, Never>?>

    private init(process: SpawnedProcess, channel: any Channel, output: AsyncStream<[UInt8]>) {
        self.process = process
        self.channel = channel
        self.output = output
        self.stderrLines = NIOLockedValueBox([])
        self.stderrDone = NIOLockedValueBox(false)
        self.stderrTask = NIOLockedValueBox(nil)
    }

    /// Starts the plugin. Its stdout and stderr are kept (the last lines go into reports);
    /// `echoStderr` also copies them to the kit's stderr.
    static func start(_ command: PluginCommand, echoStderr: Bool, logger: Logger) async throws -> PluginUnderTest {
        let toChild = try PipeDescriptors.make()
        let fromChild = try PipeDescriptors.make()
        let errors = try PipeDescriptors.make()
        var environment = ProcessInfo.processInfo.environment
        environment["PLUGBOARD_PROTOCOL"] = "plugboard-chan/1"
        environment["PLUGBOARD_RESTARTS"] = "0"
        environment["PLUGBOARD_OPTIONS"] = command.options
        environment["PLUGBOARD_PLUGIN_NAME"] = command.name
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(
                SpawnOptions(
                    executable: command.executable, arguments: command.arguments, environment: environment,
                    fileDescriptors: [1: errors.writeEnd, 2: errors.writeEnd, 3: toChild.readEnd, 4: fromChild.writeEnd]
                ),
                logger: logger
            )
        } catch {
            for fd in [toChild.readEnd, toChild.writeEnd, fromChild.readEnd, fromChild.writeEnd, errors.readEnd, errors.writeEnd] { close(fd) }
            throw error
        }
        close(toChild.readEnd)
        close(fromChild.writeEnd)
        close(errors.writeEnd)
        let (output, continuation) = AsyncStream.makeStream(of: [UInt8].self)
        let channel: any Channel
        do {
            channel = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(OutputHandler(continuation: continuation))
                    }
                }
                .takingOwnershipOfDescriptors(input: fromChild.readEnd, output: toChild.writeEnd)
                .get()
        } catch {
            close(fromChild.readEnd)
            close(toChild.writeEnd)
            close(errors.readEnd)
            process.signalGroup(SIGKILL)
            _ = await process.waitForExit()
            throw error
        }
        let run = PluginUnderTest(process: process, channel: channel, output: output)
        let lines = run.stderrLines
        let done = run.stderrDone
        let partial = NIOLockedValueBox<[UInt8]>([])
        run.stderrTask.withLockedValue { task in
            task = Task {
                try? await PipeReader.read(fd: errors.readEnd) { chunk in
                    if echoStderr { _ = chunk.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) } }
                    let complete: [String] = partial.withLockedValue { buffer in
                        buffer += chunk
                        var found: [String] = []
                        while let newline = buffer.firstIndex(of: 10) {
                            found.append(String(decoding: buffer[..<newline], as: UTF8.self))
                            buffer.removeSubrange(...newline)
                        }
                        return found
                    }
                    if !complete.isEmpty {
                        lines.withLockedValue { $0 = Array(($0 + complete).suffix(20)) }
                    }
                }
                let rest = partial.withLockedValue { $0 }
                if !rest.isEmpty { lines.withLockedValue { $0 = Array(($0 + [String(decoding: rest, as: UTF8.self)]).suffix(20)) } }
                done.withLockedValue { $0 = true }
            }
        }
        return run
    }

    /// Writes bytes to the plugin's fd 3, in order. A plugin that has closed its end makes
    /// the write fail, which is not an error here: the session's end is what the cases check.
    func write(_ bytes: [UInt8]) {
        channel.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
    }

    /// Closes the kit's side of fd 3: the plugin reads end of file.
    func closeOutput() async {
        try? await channel.close(mode: .output).get()
    }

    /// The last lines the plugin wrote on stdout and stderr.
    var stderrTail: [String] { stderrLines.withLockedValue { $0 } }

    /// Ends the run: end of file on fd 3, up to `grace` for the plugin to exit, then SIGKILL
    /// to its process group. Returns its exit status.
    @discardableResult
    func stop(grace: Duration) async -> ExitStatus {
        await closeOutput()
        let status: ExitStatus
        if let exited = await process.waitForExit(timeout: grace) {
            status = exited
        } else {
            process.signalGroup(SIGKILL)
            status = await process.waitForExit()
        }
        process.signalGroup(SIGKILL)  // anything it left behind in its group
        try? await channel.close().get()
        // Its output pipe closes when the last process holding it is gone: wait a little for
        // the last lines, not for a grandchild that escaped the process group.
        for _ in 0..<20 where !stderrDone.withLockedValue({ $0 }) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        return status
    }
}

/// Hands the plugin's fd 4 over chunk by chunk, and finishes at end of file.
private final class OutputHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let continuation: AsyncStream<[UInt8]>.Continuation

    init(continuation: AsyncStream<[UInt8]>.Continuation) {
        self.continuation = continuation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        continuation.yield(Array(unwrapInboundIn(data).readableBytesView))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { continuation.finish() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.finish()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        continuation.finish()
    }
}
