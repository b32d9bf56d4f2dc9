/// Walks msgpack bytes without building anything, and rejects what msgpack-c must never see.
///
/// msgpack-c's unpacker allocates `count * sizeof(msgpack_object)` straight from an
/// array or map header and caps nesting at its compiled-in stack. This guard runs first,
/// so that every declared length and count is backed by bytes that are really present
/// (each element needs at least one byte), nesting stays within the limit, the number of
/// values stays within ``DecodingLimits/maxValues`` (what a frame may cost once decoded:
/// each value is a `msgpack_object` while msgpack-c unpacks and a ``Value`` after), and
/// exactly one value fills the buffer.
enum StructuralGuard {
    /// Checks `bytes` and returns how many msgpack values they hold: every value at any
    /// depth, arrays and maps included, a map entry counting as two (its key and its value).
    @discardableResult
    static func check(_ bytes: UnsafeRawBufferPointer, limits: DecodingLimits) throws(CodecError) -> Int {
        guard !bytes.isEmpty else { throw CodecError(.emptyFrame, offset: 0, "a frame must hold one msgpack value") }
        var walk = Walk(b: bytes, maxDepth: limits.maxDepth, maxValues: limits.maxValues)
        try walk.skipValue(depth: 0)
        if walk.offset != bytes.count {
            throw CodecError(.trailingBytes, offset: walk.offset, "\(bytes.count - walk.offset) bytes follow the value")
        }
        return walk.values
    }

    private struct Walk {
        let b: UnsafeRawBufferPointer
        let maxDepth: Int
        let maxValues: Int
        var offset = 0
        /// Values seen so far, counting the one being read.
        var values = 0

        init(b: UnsafeRawBufferPointer, maxDepth: Int, maxValues: Int) {
            self.b = b
            self.maxDepth = maxDepth
            self.maxValues = maxValues
        }

        mutating func skipValue(depth: Int) throws(CodecError) {
            guard offset < b.count else {
                throw CodecError(.truncated, offset: offset, "a value is missing at the end of the bytes")
            }
            let start = offset
            values += 1
            guard values <= maxValues else { throw tooMany(at: start) }
            let head = b[offset]
            offset += 1
            switch head {
            case 0x00...0x7f, 0xe0...0xff, 0xc0, 0xc2, 0xc3:
                return
            case 0x80...0x8f:
                try skipContainer(elements: Int(head & 0x0f) * 2, at: start, depth: depth)
            case 0x90...0x9f:
                try skipContainer(elements: Int(head & 0x0f), at: start, depth: depth)
            case 0xa0...0xbf:
                try skipPayload(Int(head & 0x1f), at: start)
            case 0xc1:
                throw CodecError(.invalidByte, offset: start, "0xc1 is never used by msgpack")
            case 0xc4, 0xd9: try skipPayload(try readLength(1, at: start), at: start)
            case 0xc5, 0xda: try skipPayload(try readLength(2, at: start), at: start)
            case 0xc6, 0xdb: try skipPayload(try readLength(4, at: start), at: start)
            case 0xc7: try skipPayload(try readLength(1, at: start) + 1, at: start)
            case 0xc8: try skipPayload(try readLength(2, at: start) + 1, at: start)
            case 0xc9: try skipPayload(try readLength(4, at: start) + 1, at: start)
            case 0xca, 0xce, 0xd2: try skipPayload(4, at: start)
            case 0xcb, 0xcf, 0xd3: try skipPayload(8, at: start)
            case 0xcc, 0xd0: try skipPayload(1, at: start)
            case 0xcd, 0xd1: try skipPayload(2, at: start)
            case 0xd4: try skipPayload(2, at: start)
            case 0xd5: try skipPayload(3, at: start)
            case 0xd6: try skipPayload(5, at: start)
            case 0xd7: try skipPayload(9, at: start)
            case 0xd8: try skipPayload(17, at: start)
            case 0xdc:
                try skipContainer(elements: try readLength(2, at: start), at: start, depth: depth)
            case 0xdd:
                try skipContainer(elements: try readLength(4, at: start), at: start, depth: depth)
            case 0xde:
                try skipContainer(elements: try readLength(2, at: start) * 2, at: start, depth: depth)
            case 0xdf:
                try skipContainer(elements: try readLength(4, at: start) * 2, at: start, depth: depth)
            default:
                throw CodecError(.invalidByte, offset: start, "unknown msgpack type byte")
            }
        }

        private func tooMany(at start: Int) -> CodecError {
            CodecError(.tooManyValues, offset: start, "the frame holds more than \(maxValues) msgpack values (limit \(maxValues))")
        }

        private mutating func readLength(_ width: Int, at start: Int) throws(CodecError) -> Int {
            guard b.count - offset >= width else {
                throw CodecError(.truncated, offset: start, "the length field needs \(width) bytes, \(b.count - offset) present")
            }
            var n = 0
            for _ in 0..<width {
                n = n << 8 | Int(b[offset])
                offset += 1
            }
            return n
        }

        private mutating func skipPayload(_ length: Int, at start: Int) throws(CodecError) {
            guard b.count - offset >= length else {
                throw CodecError(.truncated, offset: start, "declares \(length) bytes but only \(b.count - offset) follow")
            }
            offset += length
        }

        private mutating func skipContainer(elements: Int, at start: Int, depth: Int) throws(CodecError) {
            guard depth < maxDepth else {
                throw CodecError(.nestingTooDeep, offset: start, "arrays and maps nest deeper than \(maxDepth)")
            }
            // Every element takes at least one byte: a count the bytes cannot back is refused
            // before msgpack-c would allocate for it.
            guard elements <= b.count - offset else {
                throw CodecError(.truncated, offset: start, "declares \(elements) elements but only \(b.count - offset) bytes follow")
            }
            // Every element is at least one value: a count past the limit is refused at its
            // header, without walking the elements.
            guard elements <= maxValues - values else { throw tooMany(at: start) }
            for _ in 0..<elements {
                try skipValue(depth: depth + 1)
            }
        }
    }
}
