import CMsgpack

/// Writes values through msgpack-c's packer into one reusable buffer.
///
/// Not thread-safe: a session keeps one behind a lock. Only this file and
/// `MsgpackUnpacker.swift` touch msgpack-c.
final class MsgpackPacker {
    /// Maps a channel end to its wire reference (and records that it was sent).
    typealias ChannelResolver = (ChannelEnd) throws -> ChannelReference

    private let buffer: UnsafeMutablePointer<msgpack_sbuffer>
    private let packer: UnsafeMutablePointer<msgpack_packer>
    private var failed = false
    /// msgpack values written since the last ``reset()``, counted as ``StructuralGuard``
    /// counts them (every value at any depth; a map entry is two).
    private(set) var values = 0

    init() {
        buffer = .allocate(capacity: 1)
        msgpack_sbuffer_init(buffer)
        packer = .allocate(capacity: 1)
        msgpack_packer_init(packer, UnsafeMutableRawPointer(buffer), msgpack_sbuffer_write)
    }

    deinit {
        msgpack_sbuffer_destroy(buffer)
        buffer.deallocate()
        packer.deallocate()
    }

    /// Bytes written since the last ``reset()``.
    var count: Int { buffer.pointee.size }

    /// Forgets what was written, keeping the allocation.
    func reset() {
        msgpack_sbuffer_clear(buffer)
        failed = false
        values = 0
    }

    /// Calls `body` with the bytes written so far.
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: buffer.pointee.data, count: buffer.pointee.size))
    }

    /// Reserves a 4-byte length prefix; ``finishFrame(maxFrameSize:)`` fills it in.
    func beginFrame() {
        var zero: UInt32 = 0
        withUnsafeBytes(of: &zero) { raw in
            check(msgpack_sbuffer_write(UnsafeMutableRawPointer(buffer), raw.baseAddress?.assumingMemoryBound(to: CChar.self), 4))
        }
    }

    /// Writes the big-endian body length into the prefix reserved by ``beginFrame()``;
    /// throws when the body is over `maxFrameSize` bytes or `maxValues` values.
    func finishFrame(maxFrameSize: Int, maxValues: Int = .max) throws(CodecError) {
        try checkFailure()
        let body = buffer.pointee.size - 4
        guard body <= maxFrameSize else {
            throw CodecError(.frameTooLarge, "frame body of \(body) bytes exceeds the maximum of \(maxFrameSize)")
        }
        guard values <= maxValues else {
            throw CodecError(.tooManyValues, "the frame holds \(values) msgpack values (limit \(maxValues))")
        }
        let length = UInt32(body)
        guard let data = buffer.pointee.data else { return }
        data[0] = CChar(bitPattern: UInt8(truncatingIfNeeded: length >> 24))
        data[1] = CChar(bitPattern: UInt8(truncatingIfNeeded: length >> 16))
        data[2] = CChar(bitPattern: UInt8(truncatingIfNeeded: length >> 8))
        data[3] = CChar(bitPattern: UInt8(truncatingIfNeeded: length))
    }

    /// Throws if msgpack-c could not grow its buffer during any write since ``reset()``.
    func checkFailure() throws(CodecError) {
        if failed { throw CodecError(.rejectedByMsgpackC, "msgpack-c could not grow its buffer") }
    }

    @inline(__always)
    private func check(_ rc: Int32) {
        if rc != 0 { failed = true }
    }

    func packArrayHeader(_ n: Int) {
        values += 1
        check(msgpack_pack_array(packer, n))
    }
    func packMapHeader(_ n: Int) {
        values += 1
        check(msgpack_pack_map(packer, n))
    }
    func pack(uint v: UInt64) {
        values += 1
        check(msgpack_pack_uint64(packer, v))
    }
    func pack(int v: Int64) {
        values += 1
        check(msgpack_pack_int64(packer, v))
    }
    func packTrue() {
        values += 1
        check(msgpack_pack_true(packer))
    }

    func pack(string s: String) {
        values += 1
        packStringUncounted(s)
    }

    private func packStringUncounted(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            check(msgpack_pack_str(packer, utf8.count))
            check(msgpack_pack_str_body(packer, utf8.baseAddress, utf8.count))
        }
    }

    /// Packs one value; channel ends go through `resolver`, or fail without one.
    func pack(_ value: Value, resolver: ChannelResolver?) throws {
        values += 1
        switch value {
        case .nil: check(msgpack_pack_nil(packer))
        case .bool(let b): check(b ? msgpack_pack_true(packer) : msgpack_pack_false(packer))
        case .int(let v): check(msgpack_pack_int64(packer, v))
        case .uint(let v): check(msgpack_pack_uint64(packer, v))
        case .float(let d): check(msgpack_pack_double(packer, d))
        case .string(let s): packStringUncounted(s)
        case .binary(let bytes):
            check(msgpack_pack_bin(packer, bytes.count))
            bytes.withUnsafeBytes { raw in check(msgpack_pack_bin_body(packer, raw.baseAddress, raw.count)) }
        case .array(let elements):
            check(msgpack_pack_array(packer, elements.count))
            for element in elements { try pack(element, resolver: resolver) }
        case .map(let entries):
            check(msgpack_pack_map(packer, entries.count))
            for entry in entries {
                try pack(entry.key, resolver: resolver)
                try pack(entry.value, resolver: resolver)
            }
        case .ext(let type, let data):
            packExt(type: type, data: data)
        case .channel(let end):
            guard let resolver else {
                throw CodecError(.channelOutsideSession, "\(end) can only be sent in a message on its session")
            }
            let reference = try resolver(end)
            packExt(type: reference.kind.rawValue, data: reference.payload)
        }
    }

    private func packExt(type: Int8, data: [UInt8]) {
        check(msgpack_pack_ext(packer, data.count, type))
        data.withUnsafeBytes { raw in check(msgpack_pack_ext_body(packer, raw.baseAddress, raw.count)) }
    }
}
