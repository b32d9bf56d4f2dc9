#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Spawn
import Testing
@testable import Chan

let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

struct DeadlineExceeded: Error, CustomStringConvertible {
    let what: String
    var description: String { "deadline exceeded waiting for \(what)" }
}

/// Runs `body`, failing if it has not finished within `seconds`. The deadline guards
/// against hangs; it never decides what the right answer is. It returns at the deadline
/// even if `body` ignores cancellation.
func withDeadline<T: Sendable>(_ seconds: Double = 30, _ what: String = "the operation", _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let resumed = NIOLockedValueBox(false)
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let work = Task {
            let result: Result<T, any Error>
            do { result = .success(try await body()) } catch { result = .failure(error) }
            if resumed.withLockedValue({ let was = $0; $0 = true; return !was }) {
                continuation.resume(with: result)
            }
        }
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            if resumed.withLockedValue({ let was = $0; $0 = true; return !was }) {
                work.cancel()
                continuation.resume(throwing: DeadlineExceeded(what: what))
            }
        }
    }
}

/// Where the package's executables were built: next to the test bundle.
func builtExecutable(_ name: String) throws -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { throw SystemError("readlink", errno: errno, "/proc/self/exe") }
    let selfPath = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var dir = (selfPath as NSString).deletingLastPathComponent
    // The bundle may be `X.xctest` (a file) or a directory inside the build folder.
    if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
    let path = dir + "/" + name
    guard access(path, X_OK) == 0 else {
        throw SystemError("access", errno: ENOENT, "\(path): build it first (make test runs `swift build --build-tests`)")
    }
    return path
}

/// A real child process running plugboard-test-peer with its session on fds 3/4.
struct PeerProcess {
    let session: Session
    let process: SpawnedProcess

    static func start(_ mode: String = "serve", configuration: Session.Configuration = .init(name: "test-engine")) async throws -> PeerProcess {
        let toChild = try PipeDescriptors.make()
        let fromChild = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboard-test-peer"),
            arguments: [mode],
            environment: ["PATH": "/usr/bin:/bin"],
            fileDescriptors: [3: toChild.readEnd, 4: fromChild.writeEnd, 2: 2]
        ))
        close(toChild.readEnd)
        close(fromChild.writeEnd)
        let session = try await Session.overFileDescriptors(
            read: fromChild.readEnd, write: toChild.writeEnd, role: .initiator,
            configuration: configuration, logger: quietLogger
        )
        try await session.start()
        return PeerProcess(session: session, process: process)
    }

    func stop() async {
        session.close(reason: "test finished")
        _ = await process.waitForExit()
    }
}

/// A pipe pair where the test plays the peer by hand, byte for byte.
struct RawPeer {
    let session: Session
    /// The test writes here; the session reads it.
    let writeFD: CInt
    /// The session writes here; the test reads it.
    let readFD: CInt

    static func make(configuration: Session.Configuration = .init(name: "engine", handshakeTimeout: .seconds(20))) async throws -> RawPeer {
        let inbound = try PipeDescriptors.make()
        let outbound = try PipeDescriptors.make()
        let session = try await Session.overFileDescriptors(
            read: inbound.readEnd, write: outbound.writeEnd, role: .initiator,
            configuration: configuration, logger: quietLogger
        )
        return RawPeer(session: session, writeFD: inbound.writeEnd, readFD: outbound.readEnd)
    }

    func send(bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(writeFD, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            offset += n
        }
    }

    func send(frame body: Value) throws {
        let encoded = try Msgpack.encode(body)
        send(bytes: lengthPrefix(encoded.count) + encoded)
    }

    /// Reads one frame the session wrote (blocking on a pipe that the session fills promptly).
    func readFrame() async throws -> Value? {
        let fd = readFD
        return try await Task.detached {
            func readExactly(_ n: Int) -> [UInt8]? {
                var out = [UInt8](repeating: 0, count: n)
                var got = 0
                while got < n {
                    let r = out[got...].withUnsafeMutableBytes { read(fd, $0.baseAddress, n - got) }
                    if r <= 0 { return nil }
                    got += r
                }
                return out
            }
            guard let header = readExactly(4) else { return nil }
            let length = header.reduce(0) { $0 << 8 | Int($1) }
            guard let body = readExactly(length) else { return nil }
            return try Msgpack.decode(body)
        }.value
    }

    func closeAll() {
        close(writeFD)
        close(readFD)
    }
}

func lengthPrefix(_ n: Int) -> [UInt8] {
    [UInt8(truncatingIfNeeded: n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)]
}

func helloBody(protocol version: Int64 = 1, name: String = "raw-peer", maxFrame: Int = 16 << 20, window: Int = 256 << 10) -> Value {
    .array([0, .map([
        (key: "protocol", value: .int(version)),
        (key: "name", value: .string(name)),
        (key: "max_frame", value: .int(Int64(maxFrame))),
        (key: "window", value: .int(Int64(window))),
        (key: "meta", value: .map([])),
    ])])
}

/// Two started in-memory sessions.
func startedInMemoryPair(window: Int = 256 * 1024) async throws -> (Session, Session) {
    let (a, b) = Session.inMemoryPair(.init(name: "a", window: window), .init(name: "b", window: window), logger: quietLogger)
    async let x = a.start()
    async let y = b.start()
    _ = try await (x, y)
    return (a, b)
}

/// Two started sessions over real pipes inside this process.
func startedPipePair(window: Int = 256 * 1024) async throws -> (Session, Session) {
    let ab = try PipeDescriptors.make()
    let ba = try PipeDescriptors.make()
    let a = try await Session.overFileDescriptors(read: ba.readEnd, write: ab.writeEnd, role: .initiator, configuration: .init(name: "a", window: window), logger: quietLogger)
    let b = try await Session.overFileDescriptors(read: ab.readEnd, write: ba.writeEnd, role: .acceptor, configuration: .init(name: "b", window: window), logger: quietLogger)
    async let x = a.start()
    async let y = b.start()
    _ = try await (x, y)
    return (a, b)
}

enum PairKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case inMemory, pipes
    var testDescription: String { rawValue }

    func make(window: Int = 256 * 1024) async throws -> (Session, Session) {
        switch self {
        case .inMemory: return try await startedInMemoryPair(window: window)
        case .pipes: return try await startedPipePair(window: window)
        }
    }
}

/// Serves echo requests on every channel `session` accepts, until it closes.
func serveEcho(_ session: Session) -> Task<Void, Never> {
    Task {
        await withDiscardingTaskGroup { group in
            while let channel = try? await session.accept() {
                group.addTask {
                    while let request = try? await channel.nextRequest() {
                        try? await request.respond(request.body)
                    }
                }
            }
        }
    }
}
