#if canImport(Glibc)
import Glibc
#endif
import Chan
import Hooks
import Pipeline
import Logging
import Routing

/// Runs plugins as subprocesses of plugboardd.
public enum PluginKit {
    /// The protocol the daemon passes in `PLUGBOARD_PROTOCOL`.
    public static let protocolName = "plugboard-chan/1"

    /// Serves `plugin` on fds 3 (read) and 4 (write) until the daemon goes away, then exits.
    /// With `PLUGBOARD_CONNECT` set (`unix:/path` or `tcp://HOST:PORT`), it connects to the
    /// daemon there instead, as ``serve(_:connect:tls:logger:)`` does.
    ///
    /// Started by hand (no fds 3 and 4), it says that it is a plugin and how to run one,
    /// and exits with status 2.
    public static func serve(_ plugin: some Plugin, logger: Logger = Logger(label: "plugin")) async -> Never {
        let environment = currentEnvironment()
        // Started by someone else, it connects in (docs/REMOTE.md).
        if let connect = environment["PLUGBOARD_CONNECT"], !connect.isEmpty {
            await serve(plugin, connect: connect, logger: logger)
        }
        let executableName = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") } ?? "plugin"
        // The runtime opens descriptors of its own before main runs (epoll, eventfd), so an
        // open fd 3 proves nothing: the daemon's environment variable and pipe-or-socket do.
        guard environment["PLUGBOARD_PROTOCOL"] != nil, isPipeOrSocket(3), isPipeOrSocket(4) else {
            let message = """
                \(executableName) is a Plugboard plugin: it talks to plugboardd over file descriptors 3 and 4,
                so it does nothing when started by hand. Run it under the daemon:

                  plugboardd --plugin-exec "NAME=\(CommandLine.arguments.first ?? executableName)"

                """
            writeStandardError(message)
            exit(2)
        }
        var context = PluginContext(
            name: environment["PLUGBOARD_PLUGIN_NAME"] ?? executableName,
            // An exec plugin's options are its arguments when the daemon passes none.
            options: environment["PLUGBOARD_OPTIONS"].flatMap { $0.isEmpty ? nil : $0 }
                ?? CommandLine.arguments.dropFirst().joined(separator: " "),
            restarts: Int(environment["PLUGBOARD_RESTARTS"] ?? "") ?? 0
        )
        var started: Session?
        do {
            let declaration0 = plugin.declare(context)
            let session = try await Session.overFileDescriptors(
                read: 3, write: 4, role: .acceptor,
                configuration: .init(name: context.name, meta: declaration0.wireValue), logger: logger
            )
            started = session
            try await session.start()
            context.engine = EngineConnection(session: session)
            // Declare again with the engine connection in the context, so handlers can call out.
            let declaration = plugin.declare(context)
            await withTaskExecutorPreference(session.taskExecutor) {
                await serveCalls(session: session, declaration: declaration, logger: logger)
            }
            exit(0)
        } catch {
            logger.error("plugin stopping: \(error)")
            // A refused handshake (another protocol version) leaves a GOAWAY saying why in the
            // transport's buffer, written and closed by a job already queued on its event
            // loop: let that job run before exiting, or the daemon sees only end of file.
            // (The conformance kit's handshake.version found it.)
            if let started { try? await started.taskExecutor.eventLoop.submit {}.get() }
            exit(1)
        }
    }

    /// Answers invocations on every "calls" channel the daemon opens, until the session ends.
    static func serveCalls(session: Session, declaration: PluginDeclaration, logger: Logger) async {
        await withDiscardingTaskGroup { group in
            while let channel = try? await session.accept() {
                group.addTask {
                    while let request = try? await channel.nextRequest() {
                        Task.immediate { await answer(request, declaration: declaration) }
                    }
                }
            }
        }
    }

    static func answer(_ request: Request, declaration: PluginDeclaration) async {
        do {
            let invocation = try Invocation(wire: request.body)
            let result = try await declaration.answer(invocation)
            do {
                try await request.respond(result)
            } catch {
                // The answer exists but cannot travel (over the daemon's frame limit, or an
                // end that cannot be sent): the caller hears why, and so does the log.
                let message = "plugin \(declaration.name) could not send its answer to \(invocation.kind.rawValue) \(invocation.name): \(error); send large data as a byte stream"
                writeStandardError("plugboard: \(message)\n")
                try? await request.fail(code: "reply.unsendable", message: message)
            }
        } catch let error as RoutingError {
            try? await request.fail(code: error.wireCode, message: error.reason)
        } catch let error as PluginError {
            try? await request.fail(code: error.code, message: error.message)
        } catch let error as ChanError where error.code == .remote {
            // A failed call this handler made: its code passes on unchanged.
            try? await request.fail(code: error.remoteCode ?? "plugin.error", message: error.reason)
        } catch {
            try? await request.fail(code: "plugin.error", message: "\(error)")
        }
    }

    static func isPipeOrSocket(_ fd: CInt) -> Bool {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return false }
        let type = info.st_mode & S_IFMT
        return type == S_IFIFO || type == S_IFSOCK
    }

    static func currentEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") {
                result[String(text[..<eq])] = String(text[text.index(after: eq)...])
            }
            pointer += 1
        }
        return result
    }

    static func writeStandardError(_ text: String) {
        var bytes = Array(text.utf8)
        _ = write(2, &bytes, bytes.count)
    }
}

/// A plugin's requests to the engine, on a channel labelled "engine" that it opens to the
/// daemon: `{"job": NAME, "argument": VALUE}`, `{"hooks.run": EVENT, "payload", "object"}`
/// and `{"hooks.notify": EVENT, "payload", "object"}` (docs/PROTOCOL.md).
final class EngineConnection: EngineCalls, Sendable {
    let session: Session
    private let channel: Sender?

    init(session: Session) {
        self.session = session
        self.channel = try? session.open(label: "engine")
    }

    func call(_ job: String, _ argument: Value, timeout: Duration) async throws -> Value {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        return try await channel.request(.fields(("job", .string(job)), ("argument", argument)), timeout: timeout)
    }

    func runHooks(_ event: String, payload: Value, object: String) async throws -> HookOutcome {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        // A chain's own deadlines bound it (each hook's timeout); this one only guards a hung engine.
        let answer = try await channel.request(
            .fields(("hooks.run", .string(event)), ("payload", payload), ("object", .string(object))), timeout: .seconds(300)
        )
        return try HookOutcome(value: answer)
    }

    func callBest(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        return try await channel.request(.fields(("best", .string(point)), ("argument", argument)), timeout: timeout)
    }

    func makeByteStream() throws -> (ByteStreamWriter, ByteStreamReader) {
        try session.makeByteStream()
    }

    func callProvider(_ point: String, provider: String, _ argument: Value, timeout: Duration) async throws -> Value {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        return try await channel.request(.fields(("best", .string(point)), ("provider", .string(provider)), ("argument", argument)), timeout: timeout)
    }

    func callAll(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        return try await channel.request(.fields(("all", .string(point)), ("argument", argument)), timeout: timeout)
    }

    func send(_ type: String, _ body: Value) async throws -> PipelineResult {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        // Each step has its own deadline; this one only guards a hung engine.
        let answer = try await channel.request(.fields(("pipeline.send", .string(type)), ("body", body)), timeout: .seconds(300))
        return try PipelineResult(value: answer)
    }

    func notify(_ event: String, payload: Value, object: String) async throws {
        guard let channel else { throw ChanError(.notStarted, "no channel to the engine") }
        _ = try await channel.request(.fields(("hooks.notify", .string(event)), ("payload", payload), ("object", .string(object))), timeout: .seconds(30))
    }
}
