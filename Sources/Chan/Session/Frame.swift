import NIOCore

/// One session frame. On the wire every frame body is a msgpack array whose first
/// element is the frame type (see docs/PROTOCOL.md).
enum Frame {
    enum Kind: Int64 {
        case hello = 0, open = 1, data = 2, close = 3, credit = 4, reset = 5, goAway = 6
    }

    /// `[0, {"protocol": 1, "name": ..., "max_frame": ..., "window": ..., "meta": ...}]`
    case hello(Hello)
    /// `[1, id, label]`: the sender opened a top-level channel; the peer accepts its receiver.
    case open(id: UInt64, label: String)
    /// `[2, id, value]` or `[2, id, value, true]` when it is the channel's last message.
    case data(id: UInt64, value: Value, fin: Bool)
    /// `[3, id]`: the end this side holds is closed.
    case close(id: UInt64)
    /// `[4, id, bytes]`: the receiver consumed `bytes`; the sender may send that much more.
    case credit(id: UInt64, bytes: UInt64)
    /// `[5, id, reason]`: the channel is aborted.
    case reset(id: UInt64, reason: String)
    /// `[6, reason]`: the session ends.
    case goAway(reason: String)

    var kindName: String {
        switch self {
        case .hello: return "HELLO"
        case .open: return "OPEN"
        case .data: return "DATA"
        case .close: return "CLOSE"
        case .credit: return "CREDIT"
        case .reset: return "RESET"
        case .goAway: return "GOAWAY"
        }
    }

    /// Writes this frame, length prefix included, into `packer`.
    func write(into packer: MsgpackPacker, maxFrameSize: Int, maxValues: Int = .max, resolver: MsgpackPacker.ChannelResolver?) throws {
        packer.beginFrame()
        switch self {
        case .hello(let hello):
            packer.packArrayHeader(2)
            packer.pack(uint: UInt64(Kind.hello.rawValue))
            try packer.pack(hello.value, resolver: nil)
        case .open(let id, let label):
            packer.packArrayHeader(3)
            packer.pack(uint: UInt64(Kind.open.rawValue))
            packer.pack(uint: id)
            packer.pack(string: label)
        case .data(let id, let value, let fin):
            packer.packArrayHeader(fin ? 4 : 3)
            packer.pack(uint: UInt64(Kind.data.rawValue))
            packer.pack(uint: id)
            try packer.pack(value, resolver: resolver)
            if fin { packer.packTrue() }
        case .close(let id):
            packer.packArrayHeader(2)
            packer.pack(uint: UInt64(Kind.close.rawValue))
            packer.pack(uint: id)
        case .credit(let id, let bytes):
            packer.packArrayHeader(3)
            packer.pack(uint: UInt64(Kind.credit.rawValue))
            packer.pack(uint: id)
            packer.pack(uint: bytes)
        case .reset(let id, let reason):
            packer.packArrayHeader(3)
            packer.pack(uint: UInt64(Kind.reset.rawValue))
            packer.pack(uint: id)
            packer.pack(string: reason)
        case .goAway(let reason):
            packer.packArrayHeader(2)
            packer.pack(uint: UInt64(Kind.goAway.rawValue))
            packer.pack(string: reason)
        }
        try packer.finishFrame(maxFrameSize: maxFrameSize, maxValues: maxValues)
    }

    /// Interprets a decoded frame body.
    init(parsing body: Value) throws(ChanError) {
        guard case .array(let fields) = body, let first = fields.first, let rawKind = first.intValue,
              let kind = Kind(rawValue: rawKind)
        else {
            throw ChanError(.protocolViolation, "a frame must be an array starting with a known frame type, got \(Frame.brief(body))")
        }
        func id(_ i: Int) throws(ChanError) -> UInt64 {
            guard i < fields.count, let v = fields[i].uintValue else {
                throw ChanError(.protocolViolation, "\(kind) frame: field \(i) must be a channel id")
            }
            return v
        }
        func string(_ i: Int) throws(ChanError) -> String {
            guard i < fields.count, let s = fields[i].stringValue else {
                throw ChanError(.protocolViolation, "\(kind) frame: field \(i) must be a string")
            }
            return s
        }
        func arity(_ allowed: ClosedRange<Int>) throws(ChanError) {
            guard allowed.contains(fields.count) else {
                throw ChanError(.protocolViolation, "\(kind) frame has \(fields.count) fields, expected \(allowed)")
            }
        }
        switch kind {
        case .hello:
            try arity(2...2)
            self = .hello(try Hello(parsing: fields[1]))
        case .open:
            try arity(3...3)
            self = .open(id: try id(1), label: try string(2))
        case .data:
            try arity(3...4)
            var fin = false
            if fields.count == 4 {
                guard let b = fields[3].boolValue else {
                    throw ChanError(.protocolViolation, "DATA frame: field 3 (fin) must be a boolean")
                }
                fin = b
            }
            self = .data(id: try id(1), value: fields[2], fin: fin)
        case .close:
            try arity(2...2)
            self = .close(id: try id(1))
        case .credit:
            try arity(3...3)
            guard let bytes = fields[2].uintValue else {
                throw ChanError(.protocolViolation, "CREDIT frame: field 2 must be a byte count")
            }
            self = .credit(id: try id(1), bytes: bytes)
        case .reset:
            try arity(3...3)
            self = .reset(id: try id(1), reason: try string(2))
        case .goAway:
            try arity(2...2)
            self = .goAway(reason: try string(1))
        }
    }

    static func brief(_ v: Value) -> String {
        let d = v.description
        return d.count > 80 ? String(d.prefix(80)) + "…" : d
    }
}

/// The first frame in each direction.
public struct Hello: Sendable, Hashable {
    /// The protocol version this implementation speaks.
    public static let currentProtocol: Int64 = 1

    /// Protocol version; peers must match.
    public var protocolVersion: Int64
    /// The speaker's name (a plugin's declared name, or "plugboardd").
    public var name: String
    /// The largest frame body the speaker accepts.
    public var maxFrameSize: Int
    /// Bytes the speaker buffers per channel before the sender must wait for credit.
    public var window: Int
    /// Free-form metadata (a plugin's declaration rides here).
    public var meta: Value

    /// Makes a HELLO; the version defaults to ``currentProtocol`` and `meta` to an empty map.
    public init(protocolVersion: Int64 = Hello.currentProtocol, name: String, maxFrameSize: Int, window: Int, meta: Value = .map([])) {
        self.protocolVersion = protocolVersion
        self.name = name
        self.maxFrameSize = maxFrameSize
        self.window = window
        self.meta = meta
    }

    var value: Value {
        .map([
            (key: .string("protocol"), value: .int(protocolVersion)),
            (key: .string("name"), value: .string(name)),
            (key: .string("max_frame"), value: .int(Int64(maxFrameSize))),
            (key: .string("window"), value: .int(Int64(window))),
            (key: .string("meta"), value: meta),
        ])
    }

    init(parsing v: Value) throws(ChanError) {
        guard case .map = v else { throw ChanError(.protocolViolation, "HELLO body must be a map") }
        guard let version = v["protocol"]?.intValue else {
            throw ChanError(.protocolViolation, "HELLO lacks an integer \"protocol\"")
        }
        protocolVersion = version
        name = v["name"]?.stringValue ?? "unnamed"
        guard let maxFrame = v["max_frame"]?.intValue, maxFrame >= 64, maxFrame <= Int64(UInt32.max) else {
            throw ChanError(.protocolViolation, "HELLO \"max_frame\" must be an integer between 64 and 2^32-1")
        }
        maxFrameSize = Int(maxFrame)
        guard let window = v["window"]?.intValue, window >= 1024 else {
            throw ChanError(.protocolViolation, "HELLO \"window\" must be an integer of at least 1024")
        }
        self.window = Int(window)
        meta = v["meta"] ?? .map([])
    }
}
