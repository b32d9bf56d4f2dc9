/// How a channel end is spelled on the wire: a reserved msgpack extension type whose
/// 8-byte payload is the channel id, big-endian.
///
/// The type says which end the *receiver of the message* now holds.
public struct ChannelReference: Hashable, Sendable {
    /// Which end of a channel a reference hands over.
    public enum Kind: Int8, Sendable, CaseIterable {
        /// The receiver of the message may send on the channel.
        case sender = 0x50
        /// The receiver of the message may receive from the channel.
        case receiver = 0x51
        /// The receiver of the message may read a byte stream.
        case byteStreamReader = 0x52
        /// The receiver of the message may write a byte stream.
        case byteStreamWriter = 0x53
    }

    /// Which end the reference hands over.
    public var kind: Kind
    /// The channel id, unique within the session.
    public var id: UInt64

    /// A reference to the `kind` end of channel `id`.
    public init(kind: Kind, id: UInt64) {
        self.kind = kind
        self.id = id
    }

    /// The ext payload: the id as 8 big-endian bytes.
    var payload: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: id >> (56 - 8 * UInt64($0))) }
    }

    /// Parses a reserved ext value; `nil` when `type` is not reserved.
    static func parse(type: Int8, data: UnsafeRawBufferPointer) throws(CodecError) -> ChannelReference? {
        guard let kind = Kind(rawValue: type) else { return nil }
        guard data.count == 8 else {
            throw CodecError(.badChannelReference, "ext type \(type) must carry 8 bytes, got \(data.count)")
        }
        var id: UInt64 = 0
        for byte in data { id = id << 8 | UInt64(byte) }
        return ChannelReference(kind: kind, id: id)
    }
}
