import Chan

/// One frame as PROTOCOL.md spells it, parsed strictly from the plugin's bytes or built by
/// the kit. Channel references stay `.ext` values (types 0x50...0x53).
enum WireFrame: Sendable, CustomStringConvertible {
    case hello(Value)
    case open(id: UInt64, label: String)
    case data(id: UInt64, value: Value, fin: Bool)
    case close(id: UInt64)
    case credit(id: UInt64, bytes: UInt64)
    case reset(id: UInt64, reason: String)
    case goaway(reason: String)

    /// The frame as a msgpack value: `[type, fields...]`.
    var value: Value {
        switch self {
        case .hello(let map): return [0, map]
        case .open(let id, let label): return [1, .uint(id), .string(label)]
        case .data(let id, let value, let fin): return fin ? [2, .uint(id), value, true] : [2, .uint(id), value]
        case .close(let id): return [3, .uint(id)]
        case .credit(let id, let bytes): return [4, .uint(id), .uint(bytes)]
        case .reset(let id, let reason): return [5, .uint(id), .string(reason)]
        case .goaway(let reason): return [6, .string(reason)]
        }
    }

    /// The frame with its 4-byte length prefix.
    func encoded() throws -> [UInt8] {
        Self.framed(try Msgpack.encode(value))
    }

    /// `body` with its big-endian length prefix.
    static func framed(_ body: [UInt8]) -> [UInt8] {
        let n = UInt32(truncatingIfNeeded: body.count)
        return [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + body
    }

    /// Parses a decoded frame body by the rules of PROTOCOL.md, Frames; the error says
    /// what is wrong with it.
    static func parse(_ body: Value) throws(WireProblem) -> WireFrame {
        guard case .array(let fields) = body, let first = fields.first else {
            throw WireProblem("a frame that is not an array with a frame type: \(body.brief)")
        }
        guard case .int(let type) = first else { throw WireProblem("a frame whose type is not an integer: \(first.brief)") }
        func id(_ i: Int) throws(WireProblem) -> UInt64 {
            switch fields[i] {
            case .int(let v) where v >= 0: return UInt64(v)
            case .uint(let v): return v
            default: throw WireProblem("frame type \(type) with a channel id that is not a non-negative integer: \(fields[i].brief)")
            }
        }
        func text(_ i: Int) throws(WireProblem) -> String {
            guard case .string(let s) = fields[i] else {
                throw WireProblem("frame type \(type) with field \(i) not a string: \(fields[i].brief)")
            }
            return s
        }
        func arity(_ allowed: Int...) throws(WireProblem) {
            guard allowed.contains(fields.count) else {
                throw WireProblem("frame type \(type) with \(fields.count) elements (expected \(allowed.map(String.init).joined(separator: " or ")))")
            }
        }
        switch type {
        case 0:
            try arity(2)
            return .hello(fields[1])
        case 1:
            try arity(3)
            return .open(id: try id(1), label: try text(2))
        case 2:
            try arity(3, 4)
            var fin = false
            if fields.count == 4 {
                guard case .bool(let b) = fields[3] else { throw WireProblem("DATA whose fin is not a boolean: \(fields[3].brief)") }
                fin = b
            }
            return .data(id: try id(1), value: fields[2], fin: fin)
        case 3:
            try arity(2)
            return .close(id: try id(1))
        case 4:
            try arity(3)
            let bytes: UInt64
            switch fields[2] {
            case .int(let v) where v >= 0: bytes = UInt64(v)
            case .uint(let v): bytes = v
            default: throw WireProblem("CREDIT whose byte count is not a non-negative integer: \(fields[2].brief)")
            }
            return .credit(id: try id(1), bytes: bytes)
        case 5:
            try arity(3)
            return .reset(id: try id(1), reason: try text(2))
        case 6:
            try arity(2)
            return .goaway(reason: try text(1))
        default:
            throw WireProblem("a frame of unknown type \(type)")
        }
    }

    var description: String {
        switch self {
        case .hello: return "HELLO"
        case .open(let id, let label): return "OPEN \(id) \"\(label)\""
        case .data(let id, _, let fin): return fin ? "DATA \(id) (fin)" : "DATA \(id)"
        case .close(let id): return "CLOSE \(id)"
        case .credit(let id, let bytes): return "CREDIT \(id) \(bytes)"
        case .reset(let id, let reason): return "RESET \(id) \"\(reason)\""
        case .goaway(let reason): return "GOAWAY \"\(reason)\""
        }
    }
}

/// What the plugin did wrong, in a sentence.
struct WireProblem: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Value {
    /// The value shortened for a one-line report.
    var brief: String {
        let text = "\(self)"
        return text.count > 120 ? String(text.prefix(117)) + "..." : text
    }

    /// Every channel reference inside the value, at any depth, as (ext type, id).
    var channelReferences: [(type: Int8, id: UInt64)] {
        switch self {
        case .ext(let type, let data) where (0x50...0x53).contains(type) && data.count == 8:
            return [(type, data.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })]
        case .array(let elements): return elements.flatMap(\.channelReferences)
        case .map(let entries): return entries.flatMap { $0.key.channelReferences + $0.value.channelReferences }
        default: return []
        }
    }

    /// A channel reference: ext `type` whose payload is `id`, 8 bytes big-endian.
    static func reference(_ type: Int8, _ id: UInt64) -> Value {
        .ext(type: type, data: (0..<8).map { UInt8(truncatingIfNeeded: id >> (56 - 8 * UInt64($0))) })
    }
}
