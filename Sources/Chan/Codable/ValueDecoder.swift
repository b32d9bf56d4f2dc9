import Foundation

/// Turns a ``Value`` into any `Decodable`, strictly: a missing key, a wrong type or an
/// integer out of range is a `DecodingError` naming the coding path.
public struct ValueDecoder: Sendable {
    /// Makes a decoder.
    public init() {}

    /// Decodes a `T` from `value`.
    public func decode<T: Decodable>(_ type: T.Type, from value: Value) throws -> T {
        try ValueDecoderImpl.decodeNested(type, from: value, codingPath: [])
    }
}

/// Decodes `Decodable` values from msgpack bytes through msgpack-c.
public struct MsgpackDecoder: Sendable {
    /// Limits applied to the bytes.
    public var limits: DecodingLimits

    /// Makes a decoder that applies `limits` (by default depth 32, frames up to 16 MiB).
    public init(limits: DecodingLimits = .default) { self.limits = limits }

    /// Decodes a `T` from exactly one msgpack value in `bytes`.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: some Collection<UInt8>) throws -> T {
        try ValueDecoder().decode(type, from: Msgpack.decode(bytes, limits: limits))
    }
}

struct ValueDecoderImpl: Decoder {
    let value: Value
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    static func decodeNested<T: Decodable>(_ type: T.Type, from value: Value, codingPath: [any CodingKey]) throws -> T {
        if type == Value.self, let v = value as? T { return v }
        if type == Data.self {
            guard case .binary(let bytes) = value, let data = Data(bytes) as? T else {
                throw mismatch(type, value, codingPath)
            }
            return data
        }
        if let endType = type as? any ChannelEndConvertible.Type {
            guard case .channel(let end) = value, let typed = endType.fromChannelEnd(end) as? T else {
                throw mismatch(type, value, codingPath)
            }
            return typed
        }
        return try T(from: ValueDecoderImpl(value: value, codingPath: codingPath))
    }

    static func mismatch(_ type: Any.Type, _ value: Value, _ path: [any CodingKey]) -> DecodingError {
        .typeMismatch(type, .init(codingPath: path, debugDescription: "expected \(type), found \(value)"))
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .map(let entries) = value else { throw Self.mismatch([String: Value].self, value, codingPath) }
        var byName: [String: Value] = [:]
        for entry in entries {
            switch entry.key {
            case .string(let s): byName[s] = entry.value
            case .int(let i): byName[String(i)] = entry.value
            default: continue
            }
        }
        return KeyedDecodingContainer(KeyedValueDecoding<Key>(entries: byName, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = value else { throw Self.mismatch([Value].self, value, codingPath) }
        return UnkeyedValueDecoding(items: items, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleValueDecoding(value: value, codingPath: codingPath)
    }
}

/// Shared scalar conversions with range checks.
enum Scalars {
    static func bool(_ v: Value, _ path: [any CodingKey]) throws -> Bool {
        guard case .bool(let b) = v else { throw ValueDecoderImpl.mismatch(Bool.self, v, path) }
        return b
    }

    static func string(_ v: Value, _ path: [any CodingKey]) throws -> String {
        guard case .string(let s) = v else { throw ValueDecoderImpl.mismatch(String.self, v, path) }
        return s
    }

    static func double(_ v: Value, _ path: [any CodingKey]) throws -> Double {
        switch v {
        case .float(let d): return d
        case .int(let i): return Double(i)
        case .uint(let u): return Double(u)
        default: throw ValueDecoderImpl.mismatch(Double.self, v, path)
        }
    }

    static func integer<T: FixedWidthInteger>(_ type: T.Type, _ v: Value, _ path: [any CodingKey]) throws -> T {
        let result: T?
        switch v {
        case .int(let i): result = T(exactly: i)
        case .uint(let u): result = T(exactly: u)
        default: throw ValueDecoderImpl.mismatch(type, v, path)
        }
        guard let result else {
            throw DecodingError.dataCorrupted(.init(codingPath: path, debugDescription: "\(v) does not fit in \(type)"))
        }
        return result
    }
}

struct KeyedValueDecoding<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let entries: [String: Value]
    var codingPath: [any CodingKey]
    var allKeys: [Key] { entries.keys.compactMap { Key(stringValue: $0) } }

    func contains(_ key: Key) -> Bool { entries[key.stringValue] != nil }

    private func value(_ key: Key) throws -> Value {
        guard let v = entries[key.stringValue] else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key \"\(key.stringValue)\""))
        }
        return v
    }

    func decodeNil(forKey key: Key) throws -> Bool { (entries[key.stringValue] ?? .nil).isNil }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try Scalars.bool(value(key), codingPath + [key]) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try Scalars.string(value(key), codingPath + [key]) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try Scalars.double(value(key), codingPath + [key]) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(try Scalars.double(value(key), codingPath + [key])) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try Scalars.integer(type, value(key), codingPath + [key]) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try ValueDecoderImpl.decodeNested(type, from: value(key), codingPath: codingPath + [key])
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try ValueDecoderImpl(value: value(key), codingPath: codingPath + [key]).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try ValueDecoderImpl(value: value(key), codingPath: codingPath + [key]).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        ValueDecoderImpl(value: entries["super"] ?? .nil, codingPath: codingPath)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        ValueDecoderImpl(value: entries[key.stringValue] ?? .nil, codingPath: codingPath + [key])
    }
}

struct UnkeyedValueDecoding: UnkeyedDecodingContainer {
    let items: [Value]
    var codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    init(items: [Value], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
    }

    private mutating func next(_ type: Any.Type) throws -> (Value, [any CodingKey]) {
        let path = codingPath + [IndexKey(currentIndex)]
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(type, .init(codingPath: path, debugDescription: "the array has only \(items.count) elements"))
        }
        defer { currentIndex += 1 }
        return (items[currentIndex], path)
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, items[currentIndex].isNil else { return false }
        currentIndex += 1
        return true
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { let (v, p) = try next(type); return try Scalars.bool(v, p) }
    mutating func decode(_ type: String.Type) throws -> String { let (v, p) = try next(type); return try Scalars.string(v, p) }
    mutating func decode(_ type: Double.Type) throws -> Double { let (v, p) = try next(type); return try Scalars.double(v, p) }
    mutating func decode(_ type: Int.Type) throws -> Int { let (v, p) = try next(type); return try Scalars.integer(type, v, p) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { let (v, p) = try next(type); return try Scalars.integer(type, v, p) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { let (v, p) = try next(type); return try Scalars.integer(type, v, p) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (v, p) = try next(type)
        return try ValueDecoderImpl.decodeNested(type, from: v, codingPath: p)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (v, p) = try next([String: Value].self)
        return try ValueDecoderImpl(value: v, codingPath: p).container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (v, p) = try next([Value].self)
        return try ValueDecoderImpl(value: v, codingPath: p).unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        let (v, p) = try next(Value.self)
        return ValueDecoderImpl(value: v, codingPath: p)
    }
}

struct SingleValueDecoding: SingleValueDecodingContainer {
    let value: Value
    var codingPath: [any CodingKey]

    func decodeNil() -> Bool { value.isNil }
    func decode(_ type: Bool.Type) throws -> Bool { try Scalars.bool(value, codingPath) }
    func decode(_ type: String.Type) throws -> String { try Scalars.string(value, codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try Scalars.double(value, codingPath) }
    func decode(_ type: Float.Type) throws -> Float { Float(try Scalars.double(value, codingPath)) }
    func decode(_ type: Int.Type) throws -> Int { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: Int8.Type) throws -> Int8 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: Int16.Type) throws -> Int16 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: Int32.Type) throws -> Int32 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: Int64.Type) throws -> Int64 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: UInt.Type) throws -> UInt { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try Scalars.integer(type, value, codingPath) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try Scalars.integer(type, value, codingPath) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try ValueDecoderImpl.decodeNested(type, from: value, codingPath: codingPath)
    }
}

extension Value: Codable {
    /// A `Value` inside a Codable struct is carried as it is by ``ValueEncoder``; other
    /// encoders (JSON, say) get its natural shape.
    public func encode(to encoder: any Encoder) throws {
        if let impl = encoder as? ValueEncoderImpl {
            impl.storage.node = .value(self)
            return
        }
        var container = encoder.singleValueContainer()
        switch self {
        case .nil: try container.encodeNil()
        case .bool(let b): try container.encode(b)
        case .int(let i): try container.encode(i)
        case .uint(let u): try container.encode(u)
        case .float(let d): try container.encode(d)
        case .string(let s): try container.encode(s)
        case .binary(let b): try container.encode(b)
        case .array(let a): try container.encode(a)
        case .map(let m):
            var dict: [String: Value] = [:]
            for e in m { dict[e.key.stringValue ?? e.key.description] = e.value }
            try container.encode(dict)
        case .ext(let t, let d): try container.encode(["ext": Value.int(Int64(t)), "data": .binary(d)])
        case .channel(let end): try container.encode(end.description)
        }
    }

    /// Takes the value as it is from ``ValueDecoder``; from other decoders, tries nil, bool,
    /// integer, float, string, array, then a string-keyed map (sorted by key), and throws
    /// `DecodingError.dataCorrupted` when none fits.
    public init(from decoder: any Decoder) throws {
        if let impl = decoder as? ValueDecoderImpl {
            self = impl.value
            return
        }
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .nil }
        else if let b = try? container.decode(Bool.self) { self = .bool(b) }
        else if let i = try? container.decode(Int64.self) { self = .int(i) }
        else if let u = try? container.decode(UInt64.self) { self = .uint(u) }
        else if let d = try? container.decode(Double.self) { self = .float(d) }
        else if let s = try? container.decode(String.self) { self = .string(s) }
        else if let a = try? container.decode([Value].self) { self = .array(a) }
        else if let m = try? container.decode([String: Value].self) {
            self = .map(m.sorted { $0.key < $1.key }.map { (key: .string($0.key), value: $0.value) })
        } else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a value")
        }
    }
}
