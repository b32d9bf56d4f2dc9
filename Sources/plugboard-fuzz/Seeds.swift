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
        return count
    }
}
