#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Spawn
import Testing
import TestSupport
@testable import Chan

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
        // A real thread: a blocking read must not hold one of Swift's cooperative threads.
        let body: [UInt8]? = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
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
                guard let header = readExactly(4) else { return continuation.resume(returning: nil) }
                let length = header.reduce(0) { $0 << 8 | Int($1) }
                continuation.resume(returning: readExactly(length))
            }
        }
        guard let body else { return nil }
        return try Msgpack.decode(body)
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
