/// One end of a channel, as carried inside a ``Value``.
public enum ChannelEnd: Sendable, Hashable, CustomStringConvertible {
    case sender(Sender)
    case receiver(Receiver)
    case byteStreamReader(ByteStreamReader)
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

    public static func == (lhs: ChannelEnd, rhs: ChannelEnd) -> Bool {
        lhs.core === rhs.core && lhs.referenceKind == rhs.referenceKind
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(core))
    }

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
    var channelEnd: ChannelEnd { get }
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

    public init(from decoder: any Decoder) throws {
        guard let impl = decoder as? ValueDecoderImpl, case .channel(let end) = impl.value, let typed = Self.fromChannelEnd(end) else {
            throw DecodingError.typeMismatch(Self.self, .init(codingPath: decoder.codingPath, debugDescription: "expected a \(Self.self) channel end"))
        }
        self = typed
    }
}
