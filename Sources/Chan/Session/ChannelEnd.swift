/// One end of a channel, as carried inside a ``Value``.
public enum ChannelEnd: Sendable, Hashable, CustomStringConvertible {
    /// The sending end of a channel.
    case sender(Sender)
    /// The receiving end of a channel.
    case receiver(Receiver)
    /// The reading end of a byte stream.
    case byteStreamReader(ByteStreamReader)
    /// The writing end of a byte stream.
    case byteStreamWriter(ByteStreamWriter)

    var core: ChannelEndCore {
        switch self {
        case .sender(let s): return s
        case .receiver(let r): return r
        case .byteStreamReader(let r): return r.receiver
        case .byteStreamWriter(let w): return w.sender
        }
    }

    var referenceKind: ChannelReference.Kind {
        switch self {
        case .sender: return .sender
        case .receiver: return .receiver
        case .byteStreamReader: return .byteStreamReader
        case .byteStreamWriter: return .byteStreamWriter
        }
    }

    /// Equal when both hold the same end object of the same kind.
    public static func == (lhs: ChannelEnd, rhs: ChannelEnd) -> Bool {
        lhs.core === rhs.core && lhs.referenceKind == rhs.referenceKind
    }

    /// Hashes the identity of the underlying end.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(core))
    }

    /// The kind of end and its channel id, such as `Sender(3)`.
    public var description: String {
        switch self {
        case .sender(let s): return "Sender(\(s.id))"
        case .receiver(let r): return "Receiver(\(r.id))"
        case .byteStreamReader(let r): return "ByteStreamReader(\(r.receiver.id))"
        case .byteStreamWriter(let w): return "ByteStreamWriter(\(w.sender.id))"
        }
    }
}

/// Types that the Codable bridge stores as a ``Value/channel(_:)``.
public protocol ChannelEndConvertible: Codable, Sendable {
    /// This end, wrapped as a ``ChannelEnd``.
    var channelEnd: ChannelEnd { get }
    /// The end inside `end` if it is of this type; `nil` otherwise.
    static func fromChannelEnd(_ end: ChannelEnd) -> Self?
}

extension ChannelEndConvertible {
    /// Channel ends have no shape outside a session: only ``ValueEncoder`` can carry them.
    public func encode(to encoder: any Encoder) throws {
        if let impl = encoder as? ValueEncoderImpl {
            impl.storage.node = .value(.channel(channelEnd))
            return
        }
        throw EncodingError.invalidValue(self, .init(codingPath: encoder.codingPath, debugDescription: "\(channelEnd) can only be encoded with ValueEncoder and sent on its session"))
    }

    /// Only ``ValueDecoder`` can decode a channel end, from a ``Value/channel(_:)`` of this
    /// type; any other decoder or value throws `DecodingError.typeMismatch`.
    public init(from decoder: any Decoder) throws {
        guard let impl = decoder as? ValueDecoderImpl, case .channel(let end) = impl.value, let typed = Self.fromChannelEnd(end) else {
            throw DecodingError.typeMismatch(Self.self, .init(codingPath: decoder.codingPath, debugDescription: "expected a \(Self.self) channel end"))
        }
        self = typed
    }
}
