#if canImport(Glibc)
import Glibc
#endif

/// Latency samples in nanoseconds.
struct Samples {
    var nanos: [UInt64] = []

    mutating func add(_ n: UInt64) { nanos.append(n) }

    func percentile(_ p: Double) -> Double {
        guard !nanos.isEmpty else { return 0 }
        let sorted = nanos.sorted()
        let index = min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)
        return Double(sorted[max(0, index)]) / 1000
    }
}

/// Prints one scenario's line: runs, p50 and p99 (µs), the rate the p50 implies, and the
/// limit measured beside it.
func reportLatency(_ scenario: String, _ s: Samples, limitP50: Double = 0, extra: [(String, JSONField)] = []) {
    print(jsonLine([
        ("scenario", .string(scenario)),
        ("runs", .int(s.nanos.count)),
        ("p50_us", .double(s.percentile(0.5))),
        ("p99_us", .double(s.percentile(0.99))),
        ("calls_per_s", .double(s.percentile(0.5) > 0 ? 1e6 / s.percentile(0.5) : 0)),
        ("limit_p50_us", .double(limitP50)),
        ("limit_msgs_per_s", .double(0)),
    ] + extra))
}

/// Monotonic nanoseconds.
@inline(__always)
func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// One JSON object on one line, keys in the order given.
func jsonLine(_ fields: [(String, JSONField)]) -> String {
    "{" + fields.map { "\"\($0.0)\":\($0.1.text)" }.joined(separator: ",") + "}"
}

enum JSONField {
    case string(String)
    case int(Int)
    case double(Double)

    var text: String {
        switch self {
        case .string(let s): return "\"\(s)\""
        case .int(let i): return String(i)
        case .double(let d): return String(format2(d))
        }
    }
}

func format2(_ d: Double) -> String {
    let scaled = (d * 100).rounded() / 100
    return String(scaled)
}

/// Runs `body` `count` times, one after another, timing each call: the samples and the
/// monotonic nanoseconds at the first start and the last end.
func timeSequentially(_ count: Int, _ body: () async throws -> Void) async rethrows -> (samples: Samples, start: UInt64, end: UInt64) {
    var samples = Samples()
    samples.nanos.reserveCapacity(count)
    let start = now()
    for _ in 0..<count {
        let t0 = now()
        try await body()
        samples.add(now() - t0)
    }
    return (samples, start, now())
}

/// Runs `body` `perWorker` times in each of `workers` concurrent tasks (so `workers` calls
/// are in flight), timing each call: all the samples and the seconds from start to the end
/// of the last.
func timeConcurrently(workers: Int, perWorker: Int, _ body: @escaping @Sendable () async throws -> Void) async throws -> (samples: Samples, seconds: Double) {
    let start = now()
    let samples = try await withThrowingTaskGroup(of: Samples.self) { group in
        for _ in 0..<workers {
            group.addTask { try await timeSequentially(perWorker, body).samples }
        }
        var all = Samples()
        for try await part in group { all.nanos.append(contentsOf: part.nanos) }
        return all
    }
    return (samples, Double(now() - start) / 1e9)
}
