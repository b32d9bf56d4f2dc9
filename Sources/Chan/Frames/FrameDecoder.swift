import NIOCore

/// Splits a byte stream into frame bodies: a 4-byte big-endian length, then that many bytes.
///
/// The length is checked against ``maxFrameSize`` as soon as its four bytes are present,
/// before any of the body is waited for, so an oversized frame costs nothing to refuse.
public struct FrameDecoder: ByteToMessageDecoder {
    /// Each frame body is passed on as a `ByteBuffer` slice, without its length prefix.
    public typealias InboundOut = ByteBuffer

    /// The largest body accepted.
    public let maxFrameSize: Int

    /// Makes a decoder that refuses bodies over `maxFrameSize` bytes (16 MiB by default).
    public init(maxFrameSize: Int = DecodingLimits.defaultMaxFrameSize) {
        self.maxFrameSize = maxFrameSize
    }

    /// Takes one frame body off the front of `buffer`, or returns nil if it is not all there.
    public func decodeFrame(_ buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, endianness: .big, as: UInt32.self) else {
            return nil
        }
        guard Int(length) <= maxFrameSize else {
            throw CodecError(.frameTooLarge, "the length prefix announces \(length) bytes; the maximum is \(maxFrameSize)")
        }
        guard length > 0 else {
            throw CodecError(.emptyFrame, "a frame must hold one msgpack value, the length prefix is 0")
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        return buffer.readSlice(length: Int(length))
    }

    /// Passes on one complete frame body, or asks for more data; throws ``CodecError`` with
    /// ``CodecError/Code/frameTooLarge`` or ``CodecError/Code/emptyFrame`` for a bad length prefix.
    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try decodeFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    /// Like ``decode(context:buffer:)`` at the end of the stream; bytes left over after EOF
    /// that do not make a whole frame throw ``CodecError/Code/truncated``.
    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        if let frame = try decodeFrame(&buffer) {
            context.fireChannelRead(Self.wrapInboundOut(frame))
            return .continue
        }
        if seenEOF && buffer.readableBytes > 0 {
            throw CodecError(.truncated, "the stream ended inside a frame (\(buffer.readableBytes) bytes left over)")
        }
        return .needMoreData
    }
}
