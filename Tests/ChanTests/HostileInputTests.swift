import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing
import TestSupport
@testable import Chan

@Suite("hostile input is refused with a distinct error")
struct HostileInputTests {
    func code(of bytes: [UInt8], limits: DecodingLimits = .default) -> CodecError.Code? {
        do {
            _ = try Msgpack.decode(bytes, limits: limits)
            return nil
        } catch let error as CodecError {
            return error.code
        } catch {
            return nil
        }
    }

    @Test("bytes after the value")
    func trailingBytes() {
        #expect(code(of: [0x01, 0x02]) == .trailingBytes)
    }

    @Test("nesting deeper than the limit")
    func tooDeep() {
        let deep = [UInt8](repeating: 0x91, count: 40) + [0x01]
        #expect(code(of: deep) == .nestingTooDeep)
        let shallow = [UInt8](repeating: 0x91, count: 5) + [0x01]
        #expect(code(of: shallow, limits: DecodingLimits(maxDepth: 4)) == .nestingTooDeep)
        #expect(code(of: shallow, limits: DecodingLimits(maxDepth: 5)) == nil)
    }

    @Test("the deepest value msgpack-c can unpack is accepted")
    func deepestAccepted() throws {
        let value = [UInt8](repeating: 0x91, count: DecodingLimits.msgpackCStackLimit) + [0x01]
        #expect(code(of: value) == nil)
    }

    @Test("a string that is not UTF-8")
    func invalidUTF8() {
        #expect(code(of: [0xa2, 0xc3, 0x28]) == .invalidUTF8)
        #expect(code(of: [0x91, 0xa1, 0xff]) == .invalidUTF8)
    }

    @Test("a declared length larger than the bytes present", arguments: [
        [0xa5, 0x61] as [UInt8],                       // fixstr of 5, 1 byte present
        [0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],          // bin32 of 4 GiB
        [0xdb, 0x00, 0x10],                            // str32 header cut short
        [0xdd, 0xff, 0xff, 0xff, 0xff],                // array32 of 4 billion elements, no elements
        [0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01, 0x01],    // map32 of 2 billion entries
        [0xc9, 0x00, 0x00, 0x10, 0x00, 0x05],          // ext32 of 4 KiB
        [0x92, 0x01],                                  // array of 2 with 1 element
    ])
    func truncated(_ bytes: [UInt8]) {
        #expect(code(of: bytes) == .truncated)
    }

    @Test("a count backed by no bytes is refused by the guard, before msgpack-c allocates for it")
    func unbackedCountNeverReachesMsgpackC() throws {
        // 0xdd ffffffff would make msgpack-c reserve 4G * 24 bytes. The guard reports
        // `.truncated` with the offset of the header; msgpack-c would have reported
        // `.rejectedByMsgpackC` (or run out of memory).
        do {
            _ = try Msgpack.decode([0x91, 0xdd, 0xff, 0xff, 0xff, 0xff])
            Issue.record("decoded an impossible array")
        } catch let error as CodecError {
            #expect(error.code == .truncated)
            #expect(error.offset == 1)
        }
    }

    @Test("a frame over the maximum", arguments: [17 * 1024 * 1024, Int(UInt32.max)])
    func frameTooLarge(length: Int) throws {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(length), endianness: .big)
        buffer.writeBytes([0x01])
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        #expect {
            try channel.writeInbound(buffer)
        } throws: { error in
            (error as? CodecError)?.code == .frameTooLarge
        }
        _ = try? channel.finish()
    }

    @Test("a frame body over the limit given to the value decoder")
    func valueTooLarge() {
        #expect(code(of: [UInt8](repeating: 0xc0, count: 100), limits: DecodingLimits(maxFrameSize: 10)) == .frameTooLarge)
    }

    @Test("the unused byte 0xc1 and an empty frame")
    func invalidByteAndEmpty() {
        #expect(code(of: [0xc1]) == .invalidByte)
        #expect(code(of: []) == .emptyFrame)
    }

    @Test("random bytes never crash the decoder", arguments: 0..<4)
    func randomBytes(seed: Int) {
        var generator = SplitMix(seed: UInt64(seed) &+ 0x9e37_79b9)
        for _ in 0..<5000 {
            let count = Int(generator.next() % 64) + 1
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            _ = try? Msgpack.decode(bytes)
        }
    }
}

/// A tiny deterministic generator, so failures reproduce.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

@Suite("frame decoder")
struct FrameDecoderTests {
    func frame(_ body: [UInt8]) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(UInt32(body.count), endianness: .big)
        b.writeBytes(body)
        return b
    }

    @Test("fed one byte at a time and in every other split, it yields the same frames")
    func verifier() throws {
        var two = frame([0x01])
        var second = frame([0x92, 0x01, 0xa1, 0x61])
        two.writeBuffer(&second)
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (frame([0xc0]), [ByteBuffer(bytes: [0xc0])]),
                (two, [ByteBuffer(bytes: [0x01]), ByteBuffer(bytes: [0x92, 0x01, 0xa1, 0x61])]),
                (frame([UInt8](repeating: 0xc3, count: 300)), [ByteBuffer(bytes: [UInt8](repeating: 0xc3, count: 300))]),
            ],
            decoderFactory: { FrameDecoder(maxFrameSize: 1024) }
        )
    }

    @Test("an oversized length is refused after four bytes, before any body arrives")
    func refusedEarly() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maxFrameSize: 1024)))
        #expect(throws: CodecError.self) {
            try channel.writeInbound(ByteBuffer(bytes: [0x00, 0x00, 0x04, 0x01]))
        }
        _ = try? channel.finish()
    }

    @Test("a stream that ends mid-frame is an error")
    func truncatedAtEOF() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        try channel.writeInbound(ByteBuffer(bytes: [0x00, 0x00, 0x00, 0x05, 0x01]))
        #expect(throws: CodecError.self) { try channel.finish() }
    }
}
