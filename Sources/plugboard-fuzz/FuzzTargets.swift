#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Logging
import NIOCore
import Spawn

/// The four things we fuzz, each a function of one input that must never crash, hang or
/// break an invariant (a broken invariant is a `fatalError`, which libFuzzer reports).
enum FuzzTarget: String, CaseIterable {
    /// `Msgpack.decode` (the structural guard, then msgpack-c), and for what decodes, a
    /// round trip through the encoder that must give the same value back.
    case msgpack
    /// The frame decoder: length prefixes, limits, bodies, fed in uneven chunks.
    case frames
    /// A live session reading a valid HELLO followed by the input: every control frame,
    /// channel id, credit and GOAWAY path. It must end (or stay) without crashing.
    case session
    /// Admin requests (and, through the `fz.call` job, a plugin's engine requests) sent to
    /// a real plugboardd, integers replaced by edge values: it must answer each and live.
    case admin

    func run(_ data: [UInt8]) {
        switch self {
        case .msgpack: Self.msgpack(data)
        case .frames: Self.frames(data)
        case .session: Self.session(data)
        case .admin: Self.admin(data)
        }
    }

    static func admin(_ data: [UInt8]) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await DaemonUnderFuzz.shared.send(data)
            done.signal()
        }
        if done.wait(timeout: .now() + 30) == .timedOut {
            fatalError("an admin request of \(data.count) bytes did not end within 30 s")
        }
    }

    static func msgpack(_ data: [UInt8]) {
        guard let value = try? Msgpack.decode(data) else { return }
        guard let again = try? Msgpack.encode(value) else {
            fatalError("decoded \(value) but cannot encode it again")
        }
        guard let back = try? Msgpack.decode(again), back == value else {
            fatalError("round trip changed \(value)")
        }
    }

    static func frames(_ data: [UInt8]) {
        let decoder = FrameDecoder(maxFrameSize: 4096)
        var buffer = ByteBuffer()
        // Chunk sizes come from the input itself, so splits are explored too.
        var offset = 0
        var step = 1
        while offset < data.count {
            let n = min(data.count - offset, step)
            buffer.writeBytes(data[offset..<(offset + n)])
            offset += n
            step = Int(data[offset - 1] % 17) + 1
            do {
                while let frame = try decoder.decodeFrame(&buffer) {
                    guard frame.readableBytes > 0, frame.readableBytes <= 4096 else {
                        fatalError("a frame of \(frame.readableBytes) bytes passed a 4096-byte limit")
                    }
                    _ = try? Msgpack.decode(frame.readableBytesView)
                }
            } catch {
                return  // a framing error ends the stream, as the session does
            }
        }
    }

    /// A valid HELLO from the peer: `[0, {protocol: 1, name: "fuzz", max_frame: 65536, window: 65536}]`.
    static let hello: [UInt8] = {
        let body = (try? Msgpack.encode(.array([.int(0), .fields(
            ("protocol", .int(1)), ("name", "fuzz"), ("max_frame", .int(65536)), ("window", .int(65536))
        )]))) ?? []
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + body
    }()

    static func session(_ data: [UInt8]) {
        let done = DispatchSemaphore(value: 0)
        Task {
            await runSession(data)
            done.signal()
        }
        if done.wait(timeout: .now() + 10) == .timedOut {
            fatalError("a session fed \(data.count) bytes did not end within 10 s after its input closed")
        }
    }

    static func runSession(_ data: [UInt8]) async {
        guard let toSession = try? PipeDescriptors.make(), let fromSession = try? PipeDescriptors.make() else { return }
        let logger = Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
        guard let session = try? await Session.overFileDescriptors(
            read: toSession.readEnd, write: fromSession.writeEnd, role: .acceptor,
            configuration: .init(name: "fuzz-target", handshakeTimeout: .seconds(5)), logger: logger
        ) else { return }
        // Whatever the session writes is drained, so it never blocks on a full pipe.
        let drain = fromSession.readEnd
        Foundation.Thread.detachNewThread {
            var sink = [UInt8](repeating: 0, count: 65536)
            while read(drain, &sink, sink.count) > 0 {}
            close(drain)
        }
        // An input that starts with 0xED 0x00 brings its own HELLO (its integer fields are
        // fuzzed too); any other gets a valid one first.
        let input = data.starts(with: [0xED, 0x00]) ? Array(data.dropFirst(2)) : hello + data
        let writer = toSession.writeEnd
        Foundation.Thread.detachNewThread {
            var offset = 0
            while offset < input.count {
                let n = input[offset...].withUnsafeBytes { write(writer, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                offset += n
            }
            close(writer)  // end of input: the session must notice and end
        }
        // Accept and read whatever channels the input opens, so data frames are consumed.
        Task {
            while let channel = try? await session.accept() {
                Task { while (try? await channel.receive()) != nil {} }
            }
        }
        _ = try? await session.start()
        _ = await session.waitUntilClosed()
    }
}
