import Foundation

/// Turns any `Encodable` into a ``Value``, so plugin authors work with their own structs.
///
/// `Value` fields are stored as they are, `Data` becomes binary, and channel ends
/// (``Sender``, ``Receiver``, ``ByteStreamReader``, ``ByteStreamWriter``) become
/// ``Value/channel(_:)`` for the session to send.
public struct ValueEncoder: Sendable {
    /// Makes an encoder.
    public init() {}

    /// Encodes `value` into a ``Value`` tree.
    public func encode<T: Encodable>(_ value: T) throws -> Value {
        if let direct = ValueEncoder.directValue(value) { return direct }
        let encoder = ValueEncoderImpl(codingPath: [])
        try value.encode(to: encoder)
        return encoder.storage.value
    }

    static func directValue(_ value: Any) -> Value? {
        switch value {
        case let v as Value: return v
        case let d as Data: return .binary([UInt8](d))
        case let end as any ChannelEndConvertible: return .channel(end.channelEnd)
        default: return nil
        }
    }
}

/// Encodes `Encodable` values to msgpack bytes through msgpack-c.
public struct MsgpackEncoder: Sendable {
    /// Makes an encoder.
    public init() {}

    /// Encodes `value` to msgpack bytes.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        try Msgpack.encode(ValueEncoder().encode(value))
    }
}

/// A node under construction; reference semantics let nested containers fill it in later.
final class ValueBox {
    enum Node {
        case value(Value)
        case array([ValueBox])
        case map([(String, ValueBox)])
    }
    var node: Node

    init(_ node: Node = .value(.nil)) { self.node = node }

    var value: Value {
        switch node {
        case .value(let v): return v
        case .array(let boxes): return .array(boxes.map(\.value))
        case .map(let entries): return .map(entries.map { (key: .string($0.0), value: $0.1.value) })
        }
    }
}

final class ValueEncoderImpl: Encoder {
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] = [:]
    let storage: ValueBox

    init(codingPath: [any CodingKey], storage: ValueBox = ValueBox()) {
        self.codingPath = codingPath
        self.storage = storage
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .map = storage.node {} else { storage.node = .map([]) }
        return KeyedEncodingContainer(KeyedValueEncoding<Key>(box: storage, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .array = storage.node {} else { storage.node = .array([]) }
        return UnkeyedValueEncoding(box: storage, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleValueEncoding(box: storage, codingPath: codingPath)
    }

    static func encodeNested<T: Encodable>(_ value: T, codingPath: [any CodingKey]) throws -> ValueBox {
        if let direct = ValueEncoder.directValue(value) { return ValueBox(.value(direct)) }
        let encoder = ValueEncoderImpl(codingPath: codingPath)
        try value.encode(to: encoder)
        return encoder.storage
    }
}

struct KeyedValueEncoding<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let box: ValueBox
    var codingPath: [any CodingKey]

    private func set(_ key: Key, _ child: ValueBox) { set(name: key.stringValue, child) }

    private func set(name: String, _ child: ValueBox) {
        guard case .map(var entries) = box.node else { return }
        if let i = entries.firstIndex(where: { $0.0 == name }) {
            entries[i].1 = child
        } else {
            entries.append((name, child))
        }
        box.node = .map(entries)
    }

    mutating func encodeNil(forKey key: Key) throws { set(key, ValueBox(.value(.nil))) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { set(key, ValueBox(.value(.bool(value)))) }
    mutating func encode(_ value: String, forKey key: Key) throws { set(key, ValueBox(.value(.string(value)))) }
    mutating func encode(_ value: Double, forKey key: Key) throws { set(key, ValueBox(.value(.float(value)))) }
    mutating func encode(_ value: Float, forKey key: Key) throws { set(key, ValueBox(.value(.float(Double(value))))) }
    mutating func encode(_ value: Int, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { set(key, ValueBox(.value(.int(value)))) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { set(key, ValueBox(.value(Value(unsigned: UInt64(value))))) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { set(key, ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { set(key, ValueBox(.value(Value(unsigned: value)))) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        set(key, try ValueEncoderImpl.encodeNested(value, codingPath: codingPath + [key]))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let child = ValueBox(.map([]))
        set(key, child)
        return KeyedEncodingContainer(KeyedValueEncoding<NestedKey>(box: child, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = ValueBox(.array([]))
        set(key, child)
        return UnkeyedValueEncoding(box: child, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let child = ValueBox()
        set(name: "super", child)
        return ValueEncoderImpl(codingPath: codingPath, storage: child)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        let child = ValueBox()
        set(key, child)
        return ValueEncoderImpl(codingPath: codingPath + [key], storage: child)
    }
}

struct IndexKey: CodingKey {
    var stringValue: String { String(intValue ?? 0) }
    var intValue: Int?
    init(_ index: Int) { intValue = index }
    init?(stringValue: String) { intValue = Int(stringValue) }
    init?(intValue: Int) { self.intValue = intValue }
}

struct UnkeyedValueEncoding: UnkeyedEncodingContainer {
    let box: ValueBox
    var codingPath: [any CodingKey]
    var count: Int {
        if case .array(let items) = box.node { return items.count }
        return 0
    }

    private func append(_ child: ValueBox) {
        guard case .array(var items) = box.node else { return }
        items.append(child)
        box.node = .array(items)
    }

    mutating func encodeNil() throws { append(ValueBox(.value(.nil))) }
    mutating func encode(_ value: Bool) throws { append(ValueBox(.value(.bool(value)))) }
    mutating func encode(_ value: String) throws { append(ValueBox(.value(.string(value)))) }
    mutating func encode(_ value: Double) throws { append(ValueBox(.value(.float(value)))) }
    mutating func encode(_ value: Float) throws { append(ValueBox(.value(.float(Double(value))))) }
    mutating func encode(_ value: Int) throws { append(ValueBox(.value(.int(Int64(value))))) }
    mutating func encode(_ value: Int64) throws { append(ValueBox(.value(.int(value)))) }
    mutating func encode(_ value: UInt64) throws { append(ValueBox(.value(Value(unsigned: value)))) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        append(try ValueEncoderImpl.encodeNested(value, codingPath: codingPath + [IndexKey(count)]))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let child = ValueBox(.map([]))
        let path = codingPath + [IndexKey(count)]
        append(child)
        return KeyedEncodingContainer(KeyedValueEncoding<NestedKey>(box: child, codingPath: path))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let child = ValueBox(.array([]))
        let path = codingPath + [IndexKey(count)]
        append(child)
        return UnkeyedValueEncoding(box: child, codingPath: path)
    }

    mutating func superEncoder() -> any Encoder {
        let child = ValueBox()
        let path = codingPath + [IndexKey(count)]
        append(child)
        return ValueEncoderImpl(codingPath: path, storage: child)
    }
}

struct SingleValueEncoding: SingleValueEncodingContainer {
    let box: ValueBox
    var codingPath: [any CodingKey]

    mutating func encodeNil() throws { box.node = .value(.nil) }
    mutating func encode(_ value: Bool) throws { box.node = .value(.bool(value)) }
    mutating func encode(_ value: String) throws { box.node = .value(.string(value)) }
    mutating func encode(_ value: Double) throws { box.node = .value(.float(value)) }
    mutating func encode(_ value: Float) throws { box.node = .value(.float(Double(value))) }
    mutating func encode(_ value: Int) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: Int8) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: Int16) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: Int32) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: Int64) throws { box.node = .value(.int(value)) }
    mutating func encode(_ value: UInt) throws { box.node = .value(Value(unsigned: UInt64(value))) }
    mutating func encode(_ value: UInt8) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: UInt16) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: UInt32) throws { box.node = .value(.int(Int64(value))) }
    mutating func encode(_ value: UInt64) throws { box.node = .value(Value(unsigned: value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        box.node = try ValueEncoderImpl.encodeNested(value, codingPath: codingPath).node
    }
}

extension Value {
    /// An unsigned integer, as ``int(_:)`` when it fits (the decoder's own normal form).
    public init(unsigned: UInt64) {
        self = unsigned <= UInt64(Int64.max) ? .int(Int64(unsigned)) : .uint(unsigned)
    }
}
