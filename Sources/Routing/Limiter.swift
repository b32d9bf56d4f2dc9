/// At most `limit` holders at once; the rest wait in order: a shell script's processes, a
/// plugin's engine calls in flight.
public actor Limiter {
    private let limit: Int
    private var held = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    public init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// How many are waiting now.
    public var queued: Int { waiting.count }

    /// Runs `body` once a place is free.
    public func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        await acquire()
        defer { release() }
        return try await body()
    }

    /// Takes a place, waiting for one; pair with ``release()``.
    public func acquire() async {
        if held < limit {
            held += 1
        } else {
            await withCheckedContinuation { waiting.append($0) }
        }
    }

    /// Gives a place back.
    public func release() {
        if waiting.isEmpty {
            held -= 1
        } else {
            waiting.removeFirst().resume()  // the place passes straight to the next in line
        }
    }
}
