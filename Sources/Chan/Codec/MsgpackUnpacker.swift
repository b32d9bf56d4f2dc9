import CMsgpack

/// Reads one msgpack value from untrusted bytes: the ``StructuralGuard`` first, then
/// msgpack-c's unpacker, then a conversion into ``Value`` that validates UTF-8 and turns
/// reserved extension types into channel ends through `resolver`.
enum MsgpackUnpacker {
    /// Maps a wire channel reference to a usable end on the receiving session.
    typealias ChannelResolver = (ChannelReference) throws -> Value

    /// Decodes the one value in `bytes`; `values` is how many msgpack values it holds, as
    /// ``StructuralGuard/check(_:limits:)`` counts them.
    static func unpack(_ bytes: UnsafeRawBufferPointer, limits: DecodingLimits, resolver: ChannelResolver?) throws -> (value: Value, values: Int) {
        guard bytes.count <= limits.maxFrameSize else {
            throw CodecError(.frameTooLarge, "\(bytes.count) bytes exceed the maximum of \(limits.maxFrameSize)")
        }
        let values = try StructuralGuard.check(bytes, limits: limits)
        guard let base = bytes.baseAddress else { throw CodecError(.emptyFrame, offset: 0, "no bytes") }
        var unpacked = msgpack_unpacked()
        msgpack_unpacked_init(&unpacked)
        defer { msgpack_unpacked_destroy(&unpacked) }
        var offset = 0
        let rc = msgpack_unpack_next(&unpacked, base.assumingMemoryBound(to: CChar.self), bytes.count, &offset)
        guard rc == MSGPACK_UNPACK_SUCCESS, offset == bytes.count else {
            throw CodecError(.rejectedByMsgpackC, offset: offset, "msgpack_unpack_next returned \(rc.rawValue)")
        }
        return (try convert(unpacked.data, base: base, resolver: resolver), values)
    }

    private static func convert(_ object: msgpack_object, base: UnsafeRawPointer, resolver: ChannelResolver?) throws -> Value {
        switch object.type {
        case MSGPACK_OBJECT_NIL:
            return .nil
        case MSGPACK_OBJECT_BOOLEAN:
            return .bool(object.via.boolean)
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            let u = object.via.u64
            return u <= UInt64(Int64.max) ? .int(Int64(u)) : .uint(u)
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            return .int(object.via.i64)
        case MSGPACK_OBJECT_FLOAT32, MSGPACK_OBJECT_FLOAT64:
            return .float(object.via.f64)
        case MSGPACK_OBJECT_STR:
            let raw = UnsafeRawBufferPointer(start: object.via.str.ptr, count: Int(object.via.str.size))
            guard let string = String(validating: raw, as: UTF8.self) else {
                let at = object.via.str.ptr.map { UnsafeRawPointer($0) - base }
                throw CodecError(.invalidUTF8, offset: at, "a string of \(raw.count) bytes")
            }
            return .string(string)
        case MSGPACK_OBJECT_BIN:
            let raw = UnsafeRawBufferPointer(start: object.via.bin.ptr, count: Int(object.via.bin.size))
            return .binary([UInt8](raw))
        case MSGPACK_OBJECT_ARRAY:
            let count = Int(object.via.array.size)
            guard count > 0, let elements = object.via.array.ptr else { return .array([]) }
            var result: [Value] = []
            result.reserveCapacity(count)
            for i in 0..<count { result.append(try convert(elements[i], base: base, resolver: resolver)) }
            return .array(result)
        case MSGPACK_OBJECT_MAP:
            let count = Int(object.via.map.size)
            guard count > 0, let entries = object.via.map.ptr else { return .map([]) }
            var result: [(key: Value, value: Value)] = []
            result.reserveCapacity(count)
            for i in 0..<count {
                result.append((
                    key: try convert(entries[i].key, base: base, resolver: resolver),
                    value: try convert(entries[i].val, base: base, resolver: resolver)
                ))
            }
            return .map(result)
        case MSGPACK_OBJECT_EXT:
            let raw = UnsafeRawBufferPointer(start: object.via.ext.ptr, count: Int(object.via.ext.size))
            if let reference = try ChannelReference.parse(type: object.via.ext.type, data: raw) {
                guard let resolver else {
                    throw CodecError(.channelOutsideSession, "ext type \(reference.kind.rawValue) is a channel reference, which only a session can decode")
                }
                return try resolver(reference)
            }
            return .ext(type: object.via.ext.type, data: [UInt8](raw))
        default:
            throw CodecError(.rejectedByMsgpackC, "unknown msgpack-c object type \(object.type.rawValue)")
        }
    }
}

/// Encodes and decodes single msgpack values (no framing, no channels).
public enum Msgpack {
    /// Encodes `value` through msgpack-c. Channel ends are refused.
    public static func encode(_ value: Value) throws -> [UInt8] {
        let packer = MsgpackPacker()
        try packer.pack(value, resolver: nil)
        try packer.checkFailure()
        return packer.withBytes { [UInt8]($0) }
    }

    /// Decodes exactly one value from `bytes`, strictly: see ``CodecError/Code``.
    public static func decode(_ bytes: some Collection<UInt8>, limits: DecodingLimits = .default) throws -> Value {
        let contiguous = Array(bytes)
        return try contiguous.withUnsafeBytes { raw in
            try MsgpackUnpacker.unpack(raw, limits: limits, resolver: nil).value
        }
    }
}
