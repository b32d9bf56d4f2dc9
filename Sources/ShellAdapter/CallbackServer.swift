#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Logging
import NIOConcurrencyHelpers
import PluginKit

/// The socket `plugboard-sh call JOB JSON` talks to: the adapter passes each call to the
/// engine over its own session, so a script calls with its plugin's grants and nothing more.
/// It lives in a fresh 0700 directory and serves only this uid.
public final class CallbackServer: Sendable {
    /// The socket's path (scripts get it as PLUGBOARD_SH_SOCKET).
    public let path: String
    private let listener: SessionListener

    private init(path: String, listener: SessionListener) {
        self.path = path
        self.listener = listener
    }

    public static func start(engine: NIOLockedValueBox<(any EngineCalls)?>, logger: Logger) async throws -> CallbackServer {
        var template = Array("/tmp/plugboard-sh-XXXXXX".utf8CString)
        guard let dir = mkdtemp(&template) else { throw ShellCallError.failed("cannot make a directory for the callback socket: errno \(errno)") }
        let path = String(cString: dir) + "/call.sock"
        let uid = getuid()
        let listener = try await SessionListener.bind(
            unixSocketPath: path, configuration: .init(name: "plugboard-sh"), logger: logger,
            authorize: { $0.uid == uid || $0.uid == 0 }
        ) { session in
            // The session owns its work: it ends when the client goes.
            session.tasks.run {
                do { try await session.start() } catch { return }
                await withDiscardingTaskGroup { group in
                    while let channel = try? await session.accept() {
                        group.addTask {
                            while let request = try? await channel.nextRequest() {
                                guard let job = request.body["job"]?.stringValue else {
                                    try? await request.fail(code: "bad.request", message: "a call is {\"job\": NAME, \"argument\": VALUE}")
                                    continue
                                }
                                guard let calls = engine.withLockedValue({ $0 }) else {
                                    try? await request.fail(code: "not.connected", message: "the adapter is not connected to plugboardd yet")
                                    continue
                                }
                                let timeout = Duration.clampedMilliseconds(request.body["timeout_ms"]?.intValue, default: .seconds(10))
                                do {
                                    let result = try await calls.call(job, request.body["argument"] ?? .nil, timeout: timeout)
                                    try? await request.respond(result)
                                } catch let error as ChanError {
                                    try? await request.fail(code: "call.failed", message: error.reason)
                                } catch {
                                    try? await request.fail(code: "call.failed", message: "\(error)")
                                }
                            }
                        }
                    }
                }
            }
        }
        return CallbackServer(path: path, listener: listener)
    }

    /// Stops listening and removes the socket and its directory.
    public func close() async {
        try? await listener.close()
        unlink(path)
        rmdir((path as NSString).deletingLastPathComponent)
    }
}
