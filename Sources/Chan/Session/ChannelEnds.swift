/// What every channel end shares: its session, its channel id, and whether it still
/// belongs to this process (it stops belonging once it is sent or closed).
///
/// The mutable flag is only touched under the owning session's lock: that is why the class
/// is `@unchecked Sendable` (the compiler cannot see a lock that lives in another object).
public class ChannelEndCore: @unchecked Sendable {
    let session: Session
    /// The channel id, unique within the session.
    public let id: UInt64
    /// Set under the session lock once the end is sent to the peer or closed.
    var released = false

    init(session: Session, id: UInt64) {
        self.session = session
        self.id = id
    }
}

/// The sending end of a uni-directional channel.
///
/// Messages arrive in the order they are sent. A sender that outruns its receiver waits
/// for credit (see ``Session/Configuration/window``). Dropping the last reference closes
/// the channel, so the receiver sees the end rather than waiting forever.
/// `@unchecked Sendable` as its base ``ChannelEndCore`` is: a class whose one mutable flag
/// lives under the owning session's lock.
public final class Sender: ChannelEndCore, ChannelEndConvertible, @unchecked Sendable {
    /// This sender, wrapped as ``ChannelEnd/sender(_:)``.
    public var channelEnd: ChannelEnd { .sender(self) }
    /// The sender inside `end`, or `nil` for any other kind of end.
    public static func fromChannelEnd(_ end: ChannelEnd) -> Sender? {
        if case .sender(let s) = end { return s }
        return nil
    }

    /// Sends one message, waiting for credit if the receiver is behind.
    public func send(_ value: Value) async throws {
        try await session.send(value, on: self, fin: false)
    }

    /// Sends any `Encodable` through ``ValueEncoder``.
    public func send<T: Encodable>(_ value: T) async throws {
        try await session.send(ValueEncoder().encode(value), on: self, fin: false)
    }

    /// Sends a last message and closes the channel in the same frame.
    public func finish(with value: Value) async throws {
        try await session.send(value, on: self, fin: true)
    }

    /// Closes the channel: the receiver sees the end after the messages already sent.
    public func close() {
        session.closeEnd(self, reason: nil)
    }

    /// Aborts the channel: the receiver's next receive fails with `reason`.
    public func reset(reason: String) {
        session.closeEnd(self, reason: reason)
    }

    /// Why a send on this sender would fail now, found without sending anything: the
    /// receiver's holder closed or reset the channel (a refused OPEN is reset: "too many open
    /// channels: limit N"), the session ended, this end was sent away or closed, or its pipe
    /// still has both ends here. `nil` when a send would go ahead (it may still wait for credit).
    public var sendFailure: ChanError? { session.sendFailure(self) }

    deinit {
        session.endDropped(self)
    }
}

/// The receiving end of a uni-directional channel. Also an `AsyncSequence` of messages.
/// `@unchecked Sendable` as its base ``ChannelEndCore`` is: a class whose one mutable flag
/// lives under the owning session's lock.
public final class Receiver: ChannelEndCore, ChannelEndConvertible, @unchecked Sendable {
    /// The label given by ``Session/open(label:)``, for channels opened at the top level.
    public let label: String

    init(session: Session, id: UInt64, label: String = "") {
        self.label = label
        super.init(session: session, id: id)
    }

    /// This receiver, wrapped as ``ChannelEnd/receiver(_:)``.
    public var channelEnd: ChannelEnd { .receiver(self) }
    /// The receiver inside `end`, or `nil` for any other kind of end.
    public static func fromChannelEnd(_ end: ChannelEnd) -> Receiver? {
        if case .receiver(let r) = end { return r }
        return nil
    }

    /// The next message, or `nil` once the sender closed the channel.
    ///
    /// Throws ``ChanError/Code/peerGone`` at once when the peer dies,
    /// ``ChanError/Code/timeout`` when `timeout` passes first, and
    /// ``ChanError/Code/channelReset`` when the sender aborted.
    public func receive(timeout: Duration? = nil) async throws -> Value? {
        try await session.receive(on: self, timeout: timeout)
    }

    /// The next message decoded as `T`, or `nil` at the end.
    public func receive<T: Decodable>(_ type: T.Type, timeout: Duration? = nil) async throws -> T? {
        guard let value = try await receive(timeout: timeout) else { return nil }
        return try ValueDecoder().decode(type, from: value)
    }

    /// Stops receiving: the sender's next send fails with ``ChanError/Code/channelClosed``.
    public func close() {
        session.closeEnd(self, reason: nil)
    }

    deinit {
        session.endDropped(self)
    }
}

extension Receiver: AsyncSequence {
    /// Each element is one message.
    public typealias Element = Value

    /// Receives messages one by one until the sender closes the channel.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let receiver: Receiver
        /// The next message, or `nil` at the end; throws as ``Receiver/receive(timeout:)`` does.
        public mutating func next() async throws -> Value? { try await receiver.receive() }
    }

    /// An iterator that receives without a timeout.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(receiver: self) }
}

/// The writing end of a byte stream (logs, stdin/stdout): bytes are sent as binary
/// chunks of at most ``chunkSize`` on a channel, with flow control; ``close()`` is EOF.
public final class ByteStreamWriter: ChannelEndConvertible, Hashable, Sendable {
    /// Largest chunk put in one frame.
    public static let chunkSize = 64 * 1024
    let sender: Sender

    /// The session this writer's stream belongs to.
    public var owningSession: Session { sender.owningSession }

    init(sender: Sender) { self.sender = sender }

    /// This writer, wrapped as ``ChannelEnd/byteStreamWriter(_:)``.
    public var channelEnd: ChannelEnd { .byteStreamWriter(self) }
    /// The writer inside `end`, or `nil` for any other kind of end.
    public static func fromChannelEnd(_ end: ChannelEnd) -> ByteStreamWriter? {
        if case .byteStreamWriter(let w) = end { return w }
        return nil
    }

    /// Writes `bytes`, waiting for credit when the reader is behind.
    public func write(_ bytes: some Collection<UInt8>) async throws {
        var rest = bytes[...]
        while !rest.isEmpty {
            let chunk = rest.prefix(ByteStreamWriter.chunkSize)
            try await sender.send(.binary(Array(chunk)))
            rest = rest.dropFirst(chunk.count)
        }
    }

    /// Writes the UTF-8 bytes of `string`.
    public func write(_ string: String) async throws {
        try await write(Array(string.utf8))
    }

    /// Ends the stream: the reader sees EOF after the bytes already written.
    public func close() { sender.close() }

    /// Aborts the stream: the reader's next read fails with `reason`.
    public func reset(reason: String) { sender.reset(reason: reason) }

    /// Equal only to the same object.
    public static func == (a: ByteStreamWriter, b: ByteStreamWriter) -> Bool { a === b }
    /// Hashes the object's identity.
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// The reading end of a byte stream.
public final class ByteStreamReader: ChannelEndConvertible, Hashable, Sendable {
    let receiver: Receiver

    init(receiver: Receiver) { self.receiver = receiver }

    /// This reader, wrapped as ``ChannelEnd/byteStreamReader(_:)``.
    public var channelEnd: ChannelEnd { .byteStreamReader(self) }
    /// The reader inside `end`, or `nil` for any other kind of end.
    public static func fromChannelEnd(_ end: ChannelEnd) -> ByteStreamReader? {
        if case .byteStreamReader(let r) = end { return r }
        return nil
    }

    /// The next chunk of bytes, or `nil` at EOF.
    public func read(timeout: Duration? = nil) async throws -> [UInt8]? {
        guard let value = try await receiver.receive(timeout: timeout) else { return nil }
        guard case .binary(let bytes) = value else {
            throw ChanError(.protocolViolation, "byte stream \(receiver.id) carried a non-binary message: \(Frame.brief(value))")
        }
        return bytes
    }

    /// Reads to EOF; fails if the stream grows past `limit` bytes.
    public func readAll(limit: Int = 64 * 1024 * 1024) async throws -> [UInt8] {
        var all: [UInt8] = []
        while let chunk = try await read() {
            guard all.count + chunk.count <= limit else {
                receiver.close()
                throw ChanError(.badMessage, "byte stream exceeded \(limit) bytes")
            }
            all.append(contentsOf: chunk)
        }
        return all
    }

    /// Stops reading: the writer's next write fails.
    public func close() { receiver.close() }

    /// Equal only to the same object.
    public static func == (a: ByteStreamReader, b: ByteStreamReader) -> Bool { a === b }
    /// Hashes the object's identity.
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}
