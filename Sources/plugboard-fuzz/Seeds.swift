import AdminProtocol
import Chan
import Foundation

/// The seed corpus: valid values, frames and frame sequences, so the fuzzer starts from
/// inputs that get deep before it mutates them.
enum Seeds {
    static let values: [Value] = [
        .nil, true, .int(-1), .int(1 << 40), .uint(UInt64.max), .float(1.5), "hello", .binary([0, 1, 2, 255]),
        .array([1, "two", .array([3])]),
        .fields(("name", "web"), ("env", ["A=1"]), ("labels", .fields(("team", "x"))), ("mounts", .array([.fields(("source", "/d"))]))),
        .ext(type: 5, data: [1, 2, 3]),
    ]

    static func frame(_ v: Value) -> [UInt8] {
        let body = (try? Msgpack.encode(v)) ?? []
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + body
    }

    /// Frame sequences after the HELLO: open, data (with and without fin), credit, close,
    /// reset, a request with a reply channel, goaway.
    static let sessions: [[Value]] = [
        [.array([1, 2, "calls"]), .array([2, 2, "hello"]), .array([3, 2])],
        [.array([1, 2, "x"]), .array([2, 2, .fields(("body", 1))]), .array([2, 2, "last", true])],
        [.array([1, 4, "y"]), .array([4, 4, 65536]), .array([5, 4, "reset by peer"])],
        [.array([1, 2, "calls"]), .array([2, 2, .fields(("body", "ping"), ("reply", .ext(type: 0x50, data: [0, 0, 0, 0, 0, 0, 0, 3])))])],
        [.array([6, "going away"])],
        [.array([4, 9, 100]), .array([2, 9, "to nowhere"])],
    ]

    /// Every integer field of every frame kind, with each edge value: the frames after the
    /// HELLO (open, data, close, credit, reset, a request's reply channel id), and the
    /// HELLO's own fields (sent instead of the default, after the 0xED 0x00 marker).
    static var edgeSessions: [[UInt8]] {
        var inputs: [[UInt8]] = []
        for edge in EdgeValues.all {
            let frames: [[Value]] = [
                [.array([1, edge, "x"])],
                [.array([1, 2, "x"]), .array([2, edge, "data"])],
                [.array([3, edge])],
                [.array([1, 2, "x"]), .array([4, edge, 100])],
                [.array([1, 2, "x"]), .array([4, 2, edge])],
                [.array([5, edge, "reset"])],
                [.array([edge, 2, "kind"])],
                [.array([1, 2, "calls"]), .array([2, 2, .fields(("body", edge), ("reply", .ext(type: 0x50, data: edgeChannelID(edge))))])],
            ]
            for f in frames { inputs.append(f.flatMap(frame)) }
            for field in ["protocol", "max_frame", "window"] {
                var fields: [(String, Value)] = [("protocol", .int(1)), ("name", "fuzz"), ("max_frame", .int(65536)), ("window", .int(65536))]
                if let i = fields.firstIndex(where: { $0.0 == field }) { fields[i].1 = edge }
                let hello = frame(.array([.int(0), .map(fields.map { (key: .string($0.0), value: $0.1) })]))
                inputs.append([0xED, 0x00] + hello + frame(.array([1, 2, "x"])) + frame(.array([2, 2, "after"])))
            }
        }
        return inputs
    }

    /// An 8-byte big-endian channel id from an edge value (its bit pattern).
    static func edgeChannelID(_ v: Value) -> [UInt8] {
        let bits: UInt64
        switch v {
        case .int(let i): bits = UInt64(bitPattern: i)
        case .uint(let u): bits = u
        default: bits = 0
        }
        return (0..<8).map { UInt8(truncatingIfNeeded: bits >> (56 - 8 * $0)) }
    }

    /// Admin requests with each integer field at each edge value (`timeout_ms`, `buffer`,
    /// priorities in settings), one per command the admin target sends.
    static var adminRequests: [[UInt8]] {
        var inputs: [[UInt8]] = []
        func put(_ command: AdminCommand, _ fields: Value) {
            guard let i = DaemonUnderFuzz.commands.firstIndex(of: command), let bytes = try? Msgpack.encode(fields) else { return }
            // The value bytes also steer which integers are swapped for other edge values.
            inputs.append([UInt8(i)] + bytes)
        }
        for edge in EdgeValues.all {
            put(.call, .fields(("job", "fz.call"), ("argument", .fields(("job", "fz.echo"), ("argument", edge))), ("timeout_ms", edge)))
            put(.call, .fields(("job", "state.put"), ("argument", .fields(("key", "k"), ("value", edge), ("version", edge)))))
            put(.call, .fields(("job", "fz.call"), ("argument", .fields(("job", "state.get"), ("argument", .fields(("key", "k"), ("version", edge)))))))
            put(.callBest, .fields(("point", "none"), ("argument", edge), ("timeout_ms", edge)))
            put(.callAll, .fields(("point", "none"), ("argument", edge)))
            put(.pipelineSend, .fields(("type", "t"), ("body", edge)))
            put(.pluginSet, .fields(("name", "fz"), ("settings", .fields(("crash-loop-restarts", .string("\(edge)"))))))
            put(.pluginInspect, .fields(("name", edge)))
            put(.pluginGrant, .fields(("name", "fz"), ("jobs", .array([edge]))))
        }
        return inputs
    }

    static func write(to directory: String) -> Int {
        var count = 0
        func put(_ target: String, _ name: String, _ bytes: [UInt8]) {
            let dir = directory + "/" + target
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(bytes))
            count += 1
        }
        for (i, v) in values.enumerated() {
            if let bytes = try? Msgpack.encode(v) { put("msgpack", "seed-\(i)", bytes) }
            put("frames", "seed-\(i)", frame(v) + frame(.array([2, 2, v])))
        }
        for (i, frames) in sessions.enumerated() {
            put("session", "seed-\(i)", frames.flatMap(frame))
        }
        for (i, input) in edgeSessions.enumerated() { put("session", "edge-\(i)", input) }
        for (i, input) in adminRequests.enumerated() { put("admin", "edge-\(i)", input) }
        return count
    }
}
