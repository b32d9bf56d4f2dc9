import Foundation
import PropertyBased
import Testing
import TestSupport
@testable import Chan

@Suite("msgpack codec through msgpack-c")
struct CodecTests {
    static let samples: [Value] = [
        .nil, true, false, 0, 1, -1, 127, 128, -32, -33, 255, 65_536, .int(Int64.min), .int(Int64.max),
        .uint(UInt64.max), 1.5, -0.25, .float(.infinity), "", "héllo ✓", .string(String(repeating: "x", count: 70_000)),
        .binary([]), .binary([0, 1, 2, 255]), .binary([UInt8](repeating: 7, count: 70_000)),
        [], [1, "two", [3.0]], .map([]), ["a": 1, "b": [true, .nil]],
        .map([(key: 1, value: "int key"), (key: [1, 2], value: "array key"), (key: .nil, value: .binary([9]))]),
        .ext(type: 5, data: [1, 2, 3]), .ext(type: -1, data: []), .ext(type: 42, data: [UInt8](repeating: 1, count: 300)),
    ]

    @Test("every kind of value survives a round trip", arguments: samples)
    func roundTrip(_ value: Value) throws {
        let bytes = try Msgpack.encode(value)
        #expect(try Msgpack.decode(bytes) == value)
    }

    @Test("the encoder writes standard msgpack bytes")
    func knownBytes() throws {
        #expect(try Msgpack.encode(["a": 1]) == [0x81, 0xa1, 0x61, 0x01])
        #expect(try Msgpack.encode(-1) == [0xff])
        #expect(try Msgpack.encode(.binary([1])) == [0xc4, 0x01, 0x01])
        #expect(try Msgpack.encode(.ext(type: 0x50, data: [0, 0, 0, 0, 0, 0, 0, 7])) == [0xd7, 0x50, 0, 0, 0, 0, 0, 0, 0, 7])
    }

    @Test("integers decode to .int when they fit and .uint above Int64.max")
    func integerNormalForm() throws {
        let decoded = try Msgpack.decode([0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        #expect(decoded == .uint(UInt64.max))
        if case .int(let v) = try Msgpack.decode([0xcc, 200]) { #expect(v == 200) } else { Issue.record("expected .int") }
        #expect(Value.int(5) == Value.uint(5))
    }

    @Test("random values survive a round trip")
    func propertyRoundTrip() async {
        await propertyCheck(count: 500, input: Gen.uint64()) { seed in
            var rng = SplitMix(seed: seed)
            let value = randomValue(&rng, depth: 0)
            let bytes = try Msgpack.encode(value)
            #expect(try Msgpack.decode(bytes) == value)
        }
    }

    @Test("random integers and strings keep their exact value")
    func propertyScalars() async {
        await propertyCheck(count: 300, input: Gen.int64(), Gen.letterOrNumber.string(of: 0...30)) { n, s in
            do {
                #expect(try Msgpack.decode(Msgpack.encode(.int(n))) == .int(n))
                #expect(try Msgpack.decode(Msgpack.encode(.string(s))) == .string(s))
            } catch {
                Issue.record(error)
            }
        }
    }
}

/// A random value of every msgpack kind, nested a few levels.
func randomValue(_ rng: inout SplitMix, depth: Int) -> Value {
    let pick = rng.next() % (depth >= 4 ? 8 : 10)
    switch pick {
    case 0: return .nil
    case 1: return .bool(rng.next() % 2 == 0)
    case 2: return .int(Int64(bitPattern: rng.next()) >> (rng.next() % 64))
    case 3: return Value(unsigned: rng.next())
    case 4: return .float(Double(Int64(bitPattern: rng.next())) / 1024)
    case 5:
        let scalars = (0..<Int(rng.next() % 20)).compactMap { _ in Unicode.Scalar(UInt32(rng.next() % 0x2000)) }
        return .string(String(String.UnicodeScalarView(scalars)))
    case 6: return .binary((0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
    case 7: return .ext(type: Int8(truncatingIfNeeded: rng.next() % 0x40), data: (0..<Int(rng.next() % 20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
    case 8: return .array((0..<Int(rng.next() % 6)).map { _ in randomValue(&rng, depth: depth + 1) })
    default:
        return .map((0..<Int(rng.next() % 6)).map { _ in (key: randomValue(&rng, depth: depth + 2), value: randomValue(&rng, depth: depth + 1)) })
    }
}

@Suite("Codable bridging")
struct CodableTests {
    struct Mount: Codable, Equatable {
        var source: String
        var target: String
        var readOnly: Bool
    }

    struct Spec: Codable, Equatable {
        var name: String
        var env: [String]
        var mounts: [Mount]
        var labels: [String: String]
        var memory: UInt64?
        var data: Data
        var extra: Value
        var ratio: Double
        var small: Int8
    }

    @Test("a struct goes to msgpack bytes and back unchanged")
    func structRoundTrip() throws {
        let spec = Spec(
            name: "web", env: ["A=1", "B=2"],
            mounts: [Mount(source: "/data", target: "/var/data", readOnly: true)],
            labels: ["team": "core"], memory: nil, data: Data([1, 2, 3]), extra: ["free": [1, 2]], ratio: 0.5, small: -3
        )
        let bytes = try MsgpackEncoder().encode(spec)
        #expect(try MsgpackDecoder().decode(Spec.self, from: bytes) == spec)
        let value = try ValueEncoder().encode(spec)
        #expect(value["data"] == .binary([1, 2, 3]))
        #expect(value["mounts"]?.arrayValue?.first?["target"] == "/var/data")
    }

    @Test("a missing key is an error naming the key")
    func missingKey() throws {
        #expect {
            try ValueDecoder().decode(Mount.self, from: ["source": "/a", "readOnly": true])
        } throws: { error in
            guard case DecodingError.keyNotFound(let key, _) = error else { return false }
            return key.stringValue == "target"
        }
    }

    @Test("an integer that does not fit is an error, not a wrap-around")
    func integerRange() throws {
        #expect(throws: DecodingError.self) { try ValueDecoder().decode(Int8.self, from: 300) }
        #expect(throws: DecodingError.self) { try ValueDecoder().decode(UInt32.self, from: -1) }
        #expect(try ValueDecoder().decode(UInt8.self, from: 255) == 255)
    }

    @Test("channel ends cannot be encoded outside a session")
    func channelOutsideSession() async throws {
        let (a, _) = try await startedInMemoryPair()
        let (sender, _) = try a.makePipe()
        #expect {
            try Msgpack.encode(.channel(.sender(sender)))
        } throws: { error in
            (error as? CodecError)?.code == .channelOutsideSession
        }
    }
}
