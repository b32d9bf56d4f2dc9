import NIOConcurrencyHelpers
import NIOCore

/// A container's output: the most recent bytes kept for `container logs`, and live
/// followers (`container logs --follow`, `container run`).
///
/// A follower that falls more than ``followerBacklog`` chunks behind is cut off and told
/// so (its stream is reset with a reason) rather than slowing the container or growing
/// without bound.
public final class ContainerLog: Sendable {
    /// Which output a chunk came from.
    public enum Stream: String, Sendable { case stdout, stderr }
    /// Bytes the container wrote to one stream.
    public struct Chunk: Sendable, Hashable {
        /// stdout or stderr.
        public var stream: Stream
        /// The bytes, as read.
        public var bytes: [UInt8]
    }

    /// Bytes kept per container (the oldest go first).
    public static let keptBytes = 1 << 20
    /// Small writes to one stream are kept together up to this size, so that a container
    /// writing a byte at a time costs a few thousand kept chunks, not a million.
    public static let coalesceBelow = 4096
    /// Chunks a follower may have unread before it is cut off.
    public static let followerBacklog = 4096

    private struct State {
        /// A ring: appending at the end and trimming at the front are O(1) per write.
        var chunks = CircularBuffer<Chunk>()
        var size = 0
        var trimmed = 0
        var followers: [Int: AsyncStream<Chunk>.Continuation] = [:]
        var lagged: Set<Int> = []
        var nextFollower = 0
        var closed = false
    }

    private let state = NIOLockedValueBox(State())
    /// Bytes this log keeps (``keptBytes`` but in tests).
    let limit: Int

    init(keeping limit: Int = ContainerLog.keptBytes) {
        self.limit = limit
    }

    func append(_ stream: Stream, _ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let chunk = Chunk(stream: stream, bytes: bytes)
        state.withLockedValue { s in
            let lastIndex = s.chunks.isEmpty ? nil : s.chunks.index(before: s.chunks.endIndex)
            let joins = lastIndex.map { s.chunks[$0].stream == stream && s.chunks[$0].bytes.count + bytes.count <= Self.coalesceBelow } ?? false
            if let lastIndex, joins {
                // Amortised O(1): the last chunk's bytes grow in place (no copy held meanwhile).
                s.chunks.modify(lastIndex) { $0.bytes.append(contentsOf: bytes) }
            } else {
                s.chunks.append(chunk)
            }
            s.size += bytes.count
            while s.size > limit, s.chunks.count > 1 {
                s.size -= s.chunks.removeFirst().bytes.count
                s.trimmed += 1
            }
            for (id, c) in s.followers {
                if case .dropped = c.yield(chunk) {
                    s.lagged.insert(id)
                    s.followers[id] = nil
                    c.finish()
                }
            }
        }
    }

    /// Everything kept so far, oldest first (small writes to one stream kept together).
    public var kept: [Chunk] { state.withLockedValue { Array($0.chunks) } }

    /// What was kept so far, then every later chunk until the container exits. `lagged`
    /// tells, after the stream ends, whether it was cut off for falling behind.
    public func follow() -> (chunks: AsyncStream<Chunk>, lagged: @Sendable () -> Bool) {
        let (stream, continuation) = AsyncStream.makeStream(of: Chunk.self, bufferingPolicy: .bufferingOldest(Self.followerBacklog + 256))
        let id: Int = state.withLockedValue { s in
            for c in s.chunks.suffix(Self.followerBacklog) { continuation.yield(c) }
            if s.closed {
                continuation.finish()
                return -1
            }
            let id = s.nextFollower
            s.nextFollower += 1
            s.followers[id] = continuation
            return id
        }
        continuation.onTermination = { [state] _ in _ = state.withLockedValue { $0.followers.removeValue(forKey: id) } }
        return (stream, { [state] in state.withLockedValue { $0.lagged.contains(id) } })
    }

    /// The container exited: followers' streams end once they have read everything.
    func close() {
        let all = state.withLockedValue { s in
            s.closed = true
            defer { s.followers = [:] }
            return Array(s.followers.values)
        }
        for c in all { c.finish() }
    }

    /// Live again (a container started a second time).
    func reopen() {
        state.withLockedValue { $0.closed = false }
    }
}
