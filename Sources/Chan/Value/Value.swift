/// A msgpack value, plus the one thing msgpack cannot spell on its own: a channel end.
///
/// `Value` is what travels on a ``Session``. Integers that fit in `Int64` decode as
/// ``int(_:)``; only values above `Int64.max` decode as ``uint(_:)``. Equality is
/// numeric across the two, so `.int(5) == .uint(5)`.
///
/// ``channel(_:)`` holds a ``Sender``, ``Receiver`` or byte-stream end. It can be sent
/// only inside a message on the session that created it; the plain msgpack codec
/// refuses it with ``CodecError/Code/channelOutsideSession``.
public enum Value: Sendable {
    /// The msgpack nil.
    case `nil`
    /// A boolean.
    case bool(Bool)
    /// A signed integer; every integer that fits in `Int64` decodes as this.
    case int(Int64)
    /// An unsigned integer; decoding makes one only for values above `Int64.max`.
    case uint(UInt64)
    /// A floating-point number; msgpack float32 and float64 both decode as `Double`.
    case float(Double)
    /// A string; the codec refuses bytes that are not valid UTF-8.
    case string(String)
    /// Raw bytes (msgpack bin).
    case binary([UInt8])
    /// An array of values.
    case array([Value])
    /// A map keeps its entries in wire order; keys may be any value.
    case map([(key: Value, value: Value)])
    /// An application extension type. Types 0x50...0x53 are reserved by the session
    /// for channel ends (see docs/PROTOCOL.md); others pass through untouched.
    case ext(type: Int8, data: [UInt8])
    /// A channel end carried inside a message.
    case channel(ChannelEnd)
}

extension Value {
    /// A map with string keys, in the order given: `.fields(("ok", result))`.
    public static func fields(_ pairs: (String, Value)...) -> Value {
        .map(pairs.map { (key: .string($0.0), value: $0.1) })
    }

    /// Looks up a string key in a map; `nil` for other values or a missing key.
    public subscript(key: String) -> Value? {
        guard case .map(let entries) = self else { return nil }
        for entry in entries {
            if case .string(let k) = entry.key, k == key { return entry.value }
        }
        return nil
    }

    /// The string payload, if this is a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The integer payload, if this is an integer that fits in `Int64`.
    public var intValue: Int64? {
        switch self {
        case .int(let v): return v
        case .uint(let v): return v <= UInt64(Int64.max) ? Int64(v) : nil
        default: return nil
        }
    }

    /// The integer payload, if this is a non-negative integer.
    public var uintValue: UInt64? {
        switch self {
        case .int(let v): return v >= 0 ? UInt64(v) : nil
        case .uint(let v): return v
        default: return nil
        }
    }

    /// The bytes of a binary value.
    public var binaryValue: [UInt8]? {
        if case .binary(let b) = self { return b }
        return nil
    }

    /// The elements of an array value.
    public var arrayValue: [Value]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The entries of a map value.
    public var mapValue: [(key: Value, value: Value)]? {
        if case .map(let m) = self { return m }
        return nil
    }

    /// The boolean payload, if this is a boolean.
    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// Whether this is `nil`.
    public var isNil: Bool {
        if case .nil = self { return true }
        return false
    }

    /// Whether the value contains a channel end anywhere inside it.
    public var containsChannel: Bool {
        switch self {
        case .channel: return true
        case .array(let a): return a.contains { $0.containsChannel }
        case .map(let m): return m.contains { $0.key.containsChannel || $0.value.containsChannel }
        default: return false
        }
    }

    /// A cheap estimate of the encoded size, used for flow control when no bytes are made
    /// (the in-memory transport).
    public var estimatedSize: Int {
        switch self {
        case .nil, .bool: return 1
        case .int, .uint, .float: return 9
        case .string(let s): return 5 + s.utf8.count
        case .binary(let b): return 5 + b.count
        case .ext(_, let d): return 6 + d.count
        case .channel: return 10
        case .array(let a): return a.reduce(5) { $0 + $1.estimatedSize }
        case .map(let m): return m.reduce(5) { $0 + $1.key.estimatedSize + $1.value.estimatedSize }
        }
    }

    /// How many msgpack values this value is on the wire, counted as the structural guard
    /// counts them: itself, and every value inside it at any depth (a map entry is two).
    var msgpackValueCount: Int {
        switch self {
        case .array(let a): return a.reduce(1) { $0 + $1.msgpackValueCount }
        case .map(let m): return m.reduce(1) { $0 + $1.key.msgpackValueCount + $1.value.msgpackValueCount }
        default: return 1
        }
    }
}

extension Value: Equatable {
    /// Structural equality; integers compare by number across ``int(_:)`` and ``uint(_:)``,
    /// NaN equals NaN, and maps compare their entries in order.
    public static func == (lhs: Value, rhs: Value) -> Bool {
        switch (lhs, rhs) {
        case (.nil, .nil): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.uint(let a), .uint(let b)): return a == b
        case (.int(let a), .uint(let b)), (.uint(let b), .int(let a)): return a >= 0 && UInt64(a) == b
        case (.float(let a), .float(let b)): return a == b || (a.isNaN && b.isNaN)
        case (.string(let a), .string(let b)): return a == b
        case (.binary(let a), .binary(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.map(let a), .map(let b)):
            guard a.count == b.count else { return false }
            for (x, y) in zip(a, b) where x.key != y.key || x.value != y.value { return false }
            return true
        case (.ext(let t1, let d1), .ext(let t2, let d2)): return t1 == t2 && d1 == d2
        case (.channel(let a), .channel(let b)): return a == b
        default: return false
        }
    }
}

extension Value: Hashable {
    /// Hashes consistently with `==`: a non-negative integer hashes the same as `.int` or `.uint`.
    public func hash(into hasher: inout Hasher) {
        switch self {
        case .nil: hasher.combine(0)
        case .bool(let b): hasher.combine(b)
        case .int(let v):
            if v >= 0 { hasher.combine(UInt64(v)) } else { hasher.combine(v) }
        case .uint(let v): hasher.combine(v)
        case .float(let d): hasher.combine(d.isNaN ? Double.nan.bitPattern : d.bitPattern)
        case .string(let s): hasher.combine(s)
        case .binary(let b): hasher.combine(b)
        case .array(let a): hasher.combine(a)
        case .map(let m):
            hasher.combine(m.count)
            for e in m { hasher.combine(e.key); hasher.combine(e.value) }
        case .ext(let t, let d): hasher.combine(t); hasher.combine(d)
        case .channel(let end): hasher.combine(end)
        }
    }
}

extension Value: CustomStringConvertible {
    /// A short rendering for logs: strings quoted, binary and ext shown by their byte count.
    public var description: String {
        switch self {
        case .nil: return "nil"
        case .bool(let b): return String(b)
        case .int(let v): return String(v)
        case .uint(let v): return String(v)
        case .float(let d): return String(d)
        case .string(let s): return String(reflecting: s)
        case .binary(let b): return "<\(b.count) bytes>"
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .map(let m):
            if m.isEmpty { return "[:]" }
            return "[" + m.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]"
        case .ext(let t, let d): return "ext(\(t), \(d.count) bytes)"
        case .channel(let end): return end.description
        }
    }
}

extension Value: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    /// Makes `.nil` from a `nil` literal.
    public init(nilLiteral: ()) { self = .nil }
    /// Makes `.bool` from a boolean literal.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// Makes `.int` from an integer literal.
    public init(integerLiteral value: Int64) { self = .int(value) }
    /// Makes `.float` from a floating-point literal.
    public init(floatLiteral value: Double) { self = .float(value) }
    /// Makes `.string` from a string literal.
    public init(stringLiteral value: String) { self = .string(value) }
    /// Makes `.array` from an array literal.
    public init(arrayLiteral elements: Value...) { self = .array(elements) }
    /// Makes `.map` from a dictionary literal, keeping the entries in the order written.
    public init(dictionaryLiteral elements: (Value, Value)...) {
        self = .map(elements.map { (key: $0.0, value: $0.1) })
    }
}
