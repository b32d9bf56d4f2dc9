/// Why a msgpack value or frame could not be encoded or decoded.
///
/// Each hostile-input case has its own ``Code``, and ``offset`` says where in the
/// bytes it was found. New codes can be added without breaking callers.
public struct CodecError: Error, Hashable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The code's name, as shown in messages.
        public var description: String { name }

        /// Bytes remain after the one value a frame may hold.
        public static let trailingBytes = Code("trailing bytes")
        /// Arrays and maps are nested deeper than the configured limit.
        public static let nestingTooDeep = Code("nesting too deep")
        /// A string is not valid UTF-8.
        public static let invalidUTF8 = Code("string is not valid UTF-8")
        /// A declared length or element count needs more bytes than are present.
        public static let truncated = Code("declared length exceeds the bytes present")
        /// A frame's length prefix is over the negotiated maximum.
        public static let frameTooLarge = Code("frame too large")
        /// A frame holds no bytes at all.
        public static let emptyFrame = Code("empty frame")
        /// The byte 0xc1, which msgpack never uses.
        public static let invalidByte = Code("invalid msgpack byte")
        /// A channel end was encoded outside of a session.
        public static let channelOutsideSession = Code("channel end outside a session")
        /// msgpack-c refused the bytes after they passed the structural guard.
        public static let rejectedByMsgpackC = Code("msgpack-c rejected the bytes")
        /// A reserved extension type carried a payload of the wrong shape.
        public static let badChannelReference = Code("malformed channel reference")
        /// A frame holds more msgpack values than ``DecodingLimits/maxValues`` (what it
        /// would cost once decoded).
        public static let tooManyValues = Code("too many values")
    }

    /// What went wrong.
    public var code: Code
    /// The byte offset where it was found, when known.
    public var offset: Int?
    /// A sentence for a person.
    public var reason: String

    /// Makes an error with `code`, the byte `offset` where it was found (when known), and
    /// a `reason`.
    public init(_ code: Code, offset: Int? = nil, _ reason: String) {
        self.code = code
        self.offset = offset
        self.reason = reason
    }

    /// `code: reason`, with the byte offset when it is known.
    public var description: String {
        if let offset { return "\(code) at byte \(offset): \(reason)" }
        return "\(code): \(reason)"
    }
}

/// Limits applied when decoding untrusted bytes.
public struct DecodingLimits: Sendable, Hashable {
    /// The deepest nesting of arrays and maps accepted.
    ///
    /// msgpack-c 4.0 (Debian's libmsgpackc2) is compiled with a fixed unpack stack of 32
    /// containers (`MSGPACK_EMBED_STACK_SIZE`), so 32 is both the default and the ceiling.
    public var maxDepth: Int
    /// The largest frame body accepted, in bytes.
    public var maxFrameSize: Int
    /// The most msgpack values one frame may hold: every value at any depth, arrays and
    /// maps included, a map entry counting as two.
    ///
    /// This bounds what a frame costs once decoded. Bytes alone do not: a nil is one byte
    /// on the wire but a 24-byte `msgpack_object` while msgpack-c unpacks and a ``Value``
    /// after, so a 1 MiB frame of a million nils used to cost about 41 MiB.
    public var maxValues: Int

    /// The deepest nesting msgpack-c can unpack.
    public static let msgpackCStackLimit = 32
    /// 16 MiB, the protocol's default maximum frame size.
    public static let defaultMaxFrameSize = 16 * 1024 * 1024
    /// 262,144 (2^18) values per frame, the protocol's default: at most about 12 MiB decoded
    /// (docs/PROTOCOL.md, Limits), and room for a 1 MiB plugin declaration of 10,000 hooks
    /// (about 130,000 values).
    public static let defaultMaxValues = 1 << 18

    /// Makes limits; `maxDepth` is clamped to 1...32, the most msgpack-c can unpack, and
    /// `maxValues` to at least 1.
    public init(
        maxDepth: Int = DecodingLimits.msgpackCStackLimit,
        maxFrameSize: Int = DecodingLimits.defaultMaxFrameSize,
        maxValues: Int = DecodingLimits.defaultMaxValues
    ) {
        self.maxDepth = min(max(1, maxDepth), DecodingLimits.msgpackCStackLimit)
        self.maxFrameSize = maxFrameSize
        self.maxValues = max(1, maxValues)
    }

    /// The defaults: depth 32, frames up to 16 MiB, 262,144 values per frame.
    public static let `default` = DecodingLimits()
}
