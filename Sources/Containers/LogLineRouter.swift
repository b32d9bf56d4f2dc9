import Foundation
import NIOConcurrencyHelpers

/// What a container's output lines pass through before they reach its log: given the
/// container id, the stream and one line, it returns the lines to keep (none drops it,
/// several add lines). The containers plugin routes each as a `container.log` message
/// through the pipeline.
public typealias LogLineFilter = @Sendable (_ id: String, _ stream: ContainerLog.Stream, _ line: String) async -> [String]

/// Routes one container's output through a ``LogLineFilter``, a line at a time, into its
/// log.
///
/// Bounded: at most ``capacity`` lines wait for the filter. A slow filter therefore slows
/// the lines' delivery, never memory; lines arriving while the queue is full are dropped
/// and counted, and the log records how many (`[plugboard: N lines dropped …]`) before the
/// next line that gets through. A line longer than ``maxLine`` bytes is cut into pieces.
final class LogLineRouter: Sendable {
    /// Lines that may wait for the filter.
    static let capacity = 1024
    /// The longest line passed whole.
    static let maxLine = 16 * 1024

    private struct Line: Sendable {
        let stream: ContainerLog.Stream
        let text: String
        /// Whether the container ended it with a newline (its last output may not).
        var terminated = true
    }

    private struct State {
        var partial: [ContainerLog.Stream: [UInt8]] = [:]
        var dropped = 0
    }

    private let state = NIOLockedValueBox(State())
    private let queue: AsyncStream<Line>.Continuation
    private let consumer: Task<Void, Never>

    init(id: String, log: ContainerLog, filter: @escaping LogLineFilter) {
        let (lines, queue) = AsyncStream.makeStream(of: Line.self, bufferingPolicy: .bufferingOldest(Self.capacity))
        self.queue = queue
        let state = self.state
        consumer = Task {
            for await line in lines {
                let dropped = state.withLockedValue { s in
                    defer { s.dropped = 0 }
                    return s.dropped
                }
                if dropped > 0 {
                    log.append(.stderr, Array("[plugboard: \(dropped) lines dropped: the log pipeline fell behind]\n".utf8))
                }
                let kept = await filter(id, line.stream, line.text)
                guard !kept.isEmpty else { continue }
                // A last line written without a newline is kept without one.
                log.append(line.stream, Array((kept.joined(separator: "\n") + (line.terminated ? "\n" : "")).utf8))
            }
        }
    }

    /// Takes bytes the container wrote; whole lines go to the filter.
    func feed(_ stream: ContainerLog.Stream, _ bytes: [UInt8]) {
        let lines: [String] = state.withLockedValue { s in
            var pending = s.partial[stream, default: []]
            pending.append(contentsOf: bytes)
            var out: [String] = []
            var start = pending.startIndex
            while let newline = pending[start...].firstIndex(of: 10) {
                out.append(contentsOf: Self.pieces(pending[start..<newline]))
                start = newline + 1
            }
            var rest = Array(pending[start...])
            while rest.count > Self.maxLine {
                out.append(String(decoding: rest.prefix(Self.maxLine), as: UTF8.self))
                rest.removeFirst(Self.maxLine)
            }
            s.partial[stream] = rest
            return out
        }
        enqueue(stream, lines)
    }

    /// Sends the unfinished last lines, then waits until every queued line is in the log.
    func finish() async {
        let rests = state.withLockedValue { s in
            defer { s.partial = [:] }
            return s.partial
        }
        for (stream, rest) in rests.sorted(by: { $0.key.rawValue > $1.key.rawValue }) where !rest.isEmpty {
            enqueue(stream, [String(decoding: rest, as: UTF8.self)], terminated: false)
        }
        queue.finish()
        await consumer.value
    }

    private func enqueue(_ stream: ContainerLog.Stream, _ lines: [String], terminated: Bool = true) {
        for text in lines {
            if case .dropped = queue.yield(Line(stream: stream, text: text, terminated: terminated)) {
                state.withLockedValue { $0.dropped += 1 }
            }
        }
    }

    private static func pieces(_ bytes: ArraySlice<UInt8>) -> [String] {
        guard bytes.count > maxLine else { return [String(decoding: bytes, as: UTF8.self)] }
        return stride(from: bytes.startIndex, to: bytes.endIndex, by: maxLine).map { i in
            String(decoding: bytes[i..<min(i + maxLine, bytes.endIndex)], as: UTF8.self)
        }
    }
}
