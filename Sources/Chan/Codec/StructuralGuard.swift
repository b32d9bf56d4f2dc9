/// Walks msgpack bytes without building anything, and rejects what msgpack-c must never see.
///
/// msgpack-c's unpacker allocates `count * sizeof(msgpack_object)` straight from an
/// array or map header and caps nesting at its compiled-in stack. This guard runs first,
/// so that every declared length and count is backed by bytes that are really present
/// (each element needs at least one byte), nesting stays within the limit, and exactly
/// one value fills the buffer.
enum StructuralGuard {
    static func check(_ bytes: UnsafeRawBufferPointer, limits: DecodingLimits) throws(CodecError) {
        guard !bytes.isEmpty else { throw CodecError(.emptyFrame, offset: 0, "a frame must hold one msgpack value") }
        var offset = 0
        try skipValue(bytes, &offset, depth: 0, maxDepth: limits.maxDepth)
        if offset != bytes.count {
            throw CodecError(.trailingBytes, offset: offset, "\(bytes.count - offset) bytes follow the value")
        }
    }

    private static func skipValue(_ b: UnsafeRawBufferPointer, _ offset: inout Int, depth: Int, maxDepth: Int) throws(CodecError) {
        guard offset < b.count else {
            throw CodecError(.truncated, offset: offset, "a value is missing at the end of the bytes")
        }
        let start = offset
        let head = b[offset]
        offset += 1
        switch head {
        case 0x00...0x7f, 0xe0...0xff, 0xc0, 0xc2, 0xc3:
            return
        case 0x80...0x8f:
            try skipContainer(b, &offset, elements: Int(head & 0x0f) * 2, at: start, depth: depth, maxDepth: maxDepth)
        case 0x90...0x9f:
            try skipContainer(b, &offset, elements: Int(head & 0x0f), at: start, depth: depth, maxDepth: maxDepth)
        case 0xa0...0xbf:
            try skipPayload(b, &offset, Int(head & 0x1f), at: start)
        case 0xc1:
            throw CodecError(.invalidByte, offset: start, "0xc1 is never used by msgpack")
        case 0xc4, 0xd9: try skipPayload(b, &offset, try readLength(b, &offset, 1, at: start), at: start)
        case 0xc5, 0xda: try skipPayload(b, &offset, try readLength(b, &offset, 2, at: start), at: start)
        case 0xc6, 0xdb: try skipPayload(b, &offset, try readLength(b, &offset, 4, at: start), at: start)
        case 0xc7: try skipPayload(b, &offset, try readLength(b, &offset, 1, at: start) + 1, at: start)
        case 0xc8: try skipPayload(b, &offset, try readLength(b, &offset, 2, at: start) + 1, at: start)
        case 0xc9: try skipPayload(b, &offset, try readLength(b, &offset, 4, at: start) + 1, at: start)
        case 0xca, 0xce, 0xd2: try skipPayload(b, &offset, 4, at: start)
        case 0xcb, 0xcf, 0xd3: try skipPayload(b, &offset, 8, at: start)
        case 0xcc, 0xd0: try skipPayload(b, &offset, 1, at: start)
        case 0xcd, 0xd1: try skipPayload(b, &offset, 2, at: start)
        case 0xd4: try skipPayload(b, &offset, 2, at: start)
        case 0xd5: try skipPayload(b, &offset, 3, at: start)
        case 0xd6: try skipPayload(b, &offset, 5, at: start)
        case 0xd7: try skipPayload(b, &offset, 9, at: start)
        case 0xd8: try skipPayload(b, &offset, 17, at: start)
        case 0xdc:
            try skipContainer(b, &offset, elements: try readLength(b, &offset, 2, at: start), at: start, depth: depth, maxDepth: maxDepth)
        case 0xdd:
            try skipContainer(b, &offset, elements: try readLength(b, &offset, 4, at: start), at: start, depth: depth, maxDepth: maxDepth)
        case 0xde:
            try skipContainer(b, &offset, elements: try readLength(b, &offset, 2, at: start) * 2, at: start, depth: depth, maxDepth: maxDepth)
        case 0xdf:
            try skipContainer(b, &offset, elements: try readLength(b, &offset, 4, at: start) * 2, at: start, depth: depth, maxDepth: maxDepth)
        default:
            throw CodecError(.invalidByte, offset: start, "unknown msgpack type byte")
        }
    }

    private static func readLength(_ b: UnsafeRawBufferPointer, _ offset: inout Int, _ width: Int, at start: Int) throws(CodecError) -> Int {
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

    private static func skipPayload(_ b: UnsafeRawBufferPointer, _ offset: inout Int, _ length: Int, at start: Int) throws(CodecError) {
        guard b.count - offset >= length else {
            throw CodecError(.truncated, offset: start, "declares \(length) bytes but only \(b.count - offset) follow")
        }
        offset += length
    }

    private static func skipContainer(
        _ b: UnsafeRawBufferPointer, _ offset: inout Int, elements: Int, at start: Int, depth: Int, maxDepth: Int
    ) throws(CodecError) {
        guard depth < maxDepth else {
            throw CodecError(.nestingTooDeep, offset: start, "arrays and maps nest deeper than \(maxDepth)")
        }
        // Every element takes at least one byte: a count the bytes cannot back is refused
        // before msgpack-c would allocate for it.
        guard elements <= b.count - offset else {
            throw CodecError(.truncated, offset: start, "declares \(elements) elements but only \(b.count - offset) bytes follow")
        }
        for _ in 0..<elements {
            try skipValue(b, &offset, depth: depth + 1, maxDepth: maxDepth)
        }
    }
}
