import Chan

/// The values the echo cases send: every msgpack type, in every encoding width.
struct EchoSample: Sendable {
    var name: String
    /// What it is, for a message.
    var what: String
    /// The payload as the kit encodes it.
    var value: Value
    /// What must come back (differs from `value` only when `rewrite` changes the bytes).
    var expected: Value
    /// Rewrites the encoded frame body: puts encodings in that msgpack-c never writes.
    var rewrite: (@Sendable ([UInt8]) -> [UInt8])?

    init(_ name: String, _ what: String, _ value: Value, expected: Value? = nil, rewrite: (@Sendable ([UInt8]) -> [UInt8])? = nil) {
        self.name = name
        self.what = what
        self.value = value
        self.expected = expected ?? value
        self.rewrite = rewrite
    }
}

enum EchoSamples {
    static func bytes(_ n: Int, _ seed: UInt8 = 0) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

    /// A placeholder the kit's encoder writes (fixext 1 of type 0x63 holding `index`) and
    /// `rewrite` swaps for raw bytes.
    static func placeholder(_ index: UInt8) -> Value { .ext(type: 0x63, data: [index]) }

    /// Replaces each placeholder `index` in `body` with `pieces[index]`.
    static func substitute(_ pieces: [[UInt8]]) -> @Sendable ([UInt8]) -> [UInt8] {
        { body in
            var out: [UInt8] = []
            out.reserveCapacity(body.count)
            var i = 0
            while i < body.count {
                if i + 2 < body.count, body[i] == 0xd4, body[i + 1] == 0x63, Int(body[i + 2]) < pieces.count {
                    out += pieces[Int(body[i + 2])]
                    i += 3
                } else {
                    out.append(body[i])
                    i += 1
                }
            }
            return out
        }
    }

    static let all: [EchoSample] = {
        var deepArray: Value = "deep"
        for _ in 0..<27 { deepArray = [deepArray] }
        var deepMap: Value = "deep"
        for i in 0..<27 { deepMap = .fields(("level\(i)", deepMap)) }
        // Encodings msgpack-c never writes, and what they mean.
        let wide: [([UInt8], Value)] = [
            ([0xcc, 0x02], 2),                                   // uint8 for a fixint
            ([0xcd, 0x00, 0x03], 3),                             // uint16
            ([0xce, 0x00, 0x00, 0x00, 0x04], 4),                 // uint32
            ([0xcf, 0, 0, 0, 0, 0, 0, 0, 0x05], 5),              // uint64
            ([0xd0, 0xff], -1),                                  // int8 for a negative fixint
            ([0xd1, 0x00, 0x06], 6),                             // int16 holding a positive number
            ([0xd2, 0xff, 0xff, 0xff, 0xf9], -7),                // int32
            ([0xd3, 0, 0, 0, 0, 0, 0, 0, 0x08], 8),              // int64
            ([0xca, 0x3f, 0xc0, 0x00, 0x00], .float(1.5)),       // float32
            ([0xca, 0xc0, 0x49, 0x0f, 0xdb], .float(Double(Float(bitPattern: 0xc049_0fdb)))),  // float32 -pi
            ([0xd9, 0x02, 0x68, 0x69], "hi"),                    // str8 for a fixstr
            ([0xda, 0x00, 0x02, 0x68, 0x69], "hi"),              // str16
            ([0xdb, 0x00, 0x00, 0x00, 0x02, 0x68, 0x69], "hi"),  // str32
            ([0xc5, 0x00, 0x01, 0x09], .binary([9])),            // bin16
            ([0xc6, 0x00, 0x00, 0x00, 0x01, 0x09], .binary([9])),  // bin32
            ([0xdc, 0x00, 0x01, 0x01], [1]),                     // array16
            ([0xdd, 0x00, 0x00, 0x00, 0x01, 0x01], [1]),         // array32
            ([0xde, 0x00, 0x01, 0xa1, 0x6b, 0x01], .fields(("k", 1))),  // map16
            ([0xdf, 0x00, 0x00, 0x00, 0x01, 0xa1, 0x6b, 0x01], .fields(("k", 1))),  // map32
            ([0xc7, 0x01, 0x07, 0x2a], .ext(type: 7, data: [0x2a])),  // ext8 for a fixext 1
            ([0xc8, 0x00, 0x01, 0x07, 0x2a], .ext(type: 7, data: [0x2a])),  // ext16
            ([0xc9, 0x00, 0x00, 0x00, 0x01, 0x07, 0x2a], .ext(type: 7, data: [0x2a])),  // ext32
        ]
        let placeholders: Value = .array(wide.indices.map { placeholder(UInt8($0)) })
        let wideExpected: Value = .array(wide.map(\.1))
        return [
            EchoSample("nil", "nil", .nil),
            EchoSample("bool", "booleans", [true, false]),
            EchoSample("int", "integers", [
                0, 1, 127, 128, 255, 256, 65535, 65536, 4_294_967_295, 4_294_967_296, .int(Int64.max), .uint(UInt64.max),
                -1, -32, -33, -128, -129, -32768, -32769, .int(Int64(Int32.min)), .int(Int64(Int32.min) - 1), .int(Int64.min),
            ]),
            EchoSample("float", "floats", [0.0, 0.5, -1.25, 3.141592653589793, 1e300, -2.5e-300, .float(.infinity), .float(-.infinity), .float(.nan)]),
            EchoSample("str", "strings", [
                "", "a", .string(String(repeating: "x", count: 31)), .string(String(repeating: "y", count: 32)),
                .string(String(repeating: "z", count: 300)), .string(String(repeating: "w", count: 70_000)),
                "héllo wörld ✓ 🎉 日本語", "quote \" backslash \\ nul \u{0} newline \n",
            ]),
            EchoSample("bin", "binaries", [.binary([]), .binary([0]), .binary(bytes(255)), .binary(bytes(256, 1)), .binary(bytes(70_000, 2))]),
            EchoSample("array", "arrays", [
                [], [1], .array((0..<15).map { .int(Int64($0)) }), .array((0..<16).map { .int(Int64($0)) }),
                .array([Value](repeating: .nil, count: 70_000)), [1, "two", [true, .nil, [3.5]], .fields(("k", "v"))],
            ]),
            EchoSample("map", "maps", [
                .map([]), .fields(("a", 1)),
                .map((0..<16).map { (key: .string("key\($0)"), value: .int(Int64($0))) }),
                .map([
                    (key: 7, value: "int key"), (key: -3, value: "negative key"), (key: "s", value: "string key"),
                    (key: .binary([1, 2]), value: "bin key"), (key: true, value: "bool key"), (key: .nil, value: "nil key"),
                    (key: 1.5, value: "float key"),
                ]),
            ]),
            EchoSample("ext", "ext values (types other than the channel ends 0x50-0x53 pass through untouched)", [
                .ext(type: 1, data: bytes(1)), .ext(type: 2, data: bytes(2)), .ext(type: 3, data: bytes(4)), .ext(type: 4, data: bytes(8)),
                .ext(type: 5, data: bytes(16)), .ext(type: 6, data: []), .ext(type: 7, data: bytes(3)), .ext(type: 8, data: bytes(300)),
                .ext(type: 127, data: bytes(70_000)), .ext(type: -2, data: bytes(5)),
            ]),
            EchoSample("timestamp", "timestamps (ext -1, 4, 8 and 12 bytes)", [
                .ext(type: -1, data: [0x5f, 0x5e, 0x10, 0x00]), .ext(type: -1, data: [0, 0, 0, 1, 0x5f, 0x5e, 0x10, 0x00]),
                .ext(type: -1, data: [0, 0, 0, 1, 0, 0, 0, 0, 0x5f, 0x5e, 0x10, 0x00]),
            ]),
            EchoSample("nested", "arrays and maps nested 28 deep", [deepArray, deepMap]),
            EchoSample("large", "a 900 KiB binary (under plugboardd's 1 MiB max_frame)", .binary(bytes(900 * 1024, 3))),
            EchoSample(
                "wide-encodings", "values in the longer encodings a decoder must accept (uint8 for 2, str8 for \"hi\", float32, array16, ...)",
                placeholders, expected: wideExpected, rewrite: substitute(wide.map(\.0))
            ),
        ]
    }()

    /// Where `got` differs from `sent`, in a sentence; nil when they are equal.
    static func difference(sent: Value, got: Value, at path: String = "") -> String? {
        if sent == got && sameKinds(sent, got) { return nil }
        switch (sent, got) {
        case (.array(let a), .array(let b)) where a.count == b.count:
            for (i, (x, y)) in zip(a, b).enumerated() {
                if let d = difference(sent: x, got: y, at: "\(path)[\(i)]") { return d }
            }
        case (.map(let a), .map(let b)) where a.count == b.count:
            for (x, y) in zip(a, b) {
                if x.key != y.key { return "at \(path.isEmpty ? "the top" : path): sent key \(x.key.brief), got back key \(y.key.brief)" }
                if let d = difference(sent: x.value, got: y.value, at: "\(path).\(x.key.stringValue ?? x.key.brief)") { return d }
            }
        default: break
        }
        return "at \(path.isEmpty ? "the top" : path): sent \(describe(sent)), got back \(describe(got))"
    }

    /// Same structure and msgpack types (a float must not come back an integer).
    static func sameKinds(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case (.int, .int), (.int, .uint), (.uint, .int), (.uint, .uint), (.nil, .nil), (.bool, .bool), (.float, .float),
             (.string, .string), (.binary, .binary), (.ext, .ext):
            return true
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { sameKinds($0, $1) }
        case (.map(let x), .map(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { sameKinds($0.key, $1.key) && sameKinds($0.value, $1.value) }
        default: return false
        }
    }

    static func describe(_ v: Value) -> String {
        switch v {
        case .nil: return "nil"
        case .bool(let b): return "\(b)"
        case .int(let n): return "the integer \(n)"
        case .uint(let n): return "the integer \(n)"
        case .float(let d): return "the float \(d)"
        case .string(let s): return s.count > 40 ? "a string of \(s.utf8.count) bytes" : "the string \"\(s)\""
        case .binary(let b): return "a bin of \(b.count) bytes"
        case .array(let a): return "an array of \(a.count)"
        case .map(let m): return "a map of \(m.count)"
        case .ext(let type, let data): return "an ext of type \(type) with \(data.count) bytes"
        case .channel: return "a channel end"
        }
    }
}
