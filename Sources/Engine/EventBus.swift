import Chan
import CoreMetrics
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Which events a subscriber wants: types (exact, or a prefix ending in `*`) and
/// attributes that must be equal. Empty means everything.
public struct EventFilter: Sendable, Hashable {
    /// Event types wanted: exact names, or prefixes ending in `*`; empty means every type.
    public var types: [String]
    /// Attributes an event must carry with exactly these values (compared as strings).
    public var attributes: [String: String]

    /// A filter; with no arguments it matches every event.
    public init(types: [String] = [], attributes: [String: String] = [:]) {
        self.types = types
        self.attributes = attributes
    }

    /// From a request: `{"types": [..], "attributes": {K: V}}`.
    public init(wire body: Value) throws {
        var attributes: [String: String] = [:]
        for entry in body["attributes"]?.mapValue ?? [] {
            guard let k = entry.key.stringValue, let v = entry.value.stringValue else {
                throw EngineError(.badDeclaration, "an event filter's attributes map names to strings")
            }
            attributes[k] = v
        }
        self.init(types: (body["types"]?.arrayValue ?? []).compactMap(\.stringValue), attributes: attributes)
    }

    func matches(type: String, attributes values: [(String, Value)]) -> Bool {
        if !types.isEmpty, !types.contains(where: { $0 == type || ($0.hasSuffix("*") && type.hasPrefix($0.dropLast())) }) { return false }
        for (key, wanted) in attributes {
            guard let v = values.first(where: { $0.0 == key })?.1 else { return false }
            if v.stringValue ?? v.description != wanted { return false }
        }
        return true
    }
}

/// What a subscriber receives next.
public enum EventRecord: Sendable {
    /// An event: `{"seq", "time", "type", ...attributes}`.
    case event(Value)
    /// Events that matched but did not fit in the subscriber's buffer.
    case lost(Int)

    /// As sent to subscribers: an event, or `{"type": "events.lost", "count": N}`.
    public var value: Value {
        switch self {
        case .event(let v): return v
        case .lost(let n): return .fields(("type", "events.lost"), ("count", .int(Int64(n))))
        }
    }
}

/// An event refused because its encoded size is over ``EventBus/maximumEventBytes``.
public struct EventTooLarge: Error, Hashable, Sendable, CustomStringConvertible {
    /// The event's type.
    public var type: String
    /// Its size, msgpack-encoded, in bytes.
    public var bytes: Int

    /// "event TYPE is N bytes encoded; ...".
    public var description: String {
        "event \(type) is \(bytes) bytes encoded, over the limit of \(EventBus.maximumEventBytes) bytes; publish a reference to the data (a state key, a file) instead"
    }
}

/// Where a new subscription starts: now, or with events the bus still keeps.
public enum EventReplay: Sendable, Hashable {
    /// Only events published from now on.
    case none
    /// Kept events whose sequence number is greater than this one, then live events.
    case afterSequence(UInt64)
    /// Kept events published no longer ago than this (by the daemon's own clock), then live events.
    case within(Duration)
}

/// Publish/subscribe of engine and plugin events.
///
/// Publishing never waits: each subscriber has a bounded buffer — at most `capacity` events
/// and at most ``maximumBufferedBytes`` of them, encoded — and an event that does not fit is
/// counted for that subscriber, who receives an `events.lost` record with the count before
/// its next event. Every event has a sequence number, so order is checkable. An event is at
/// most ``maximumEventBytes`` encoded: ``publishOrRefuse(_:_:)`` refuses a larger one (a
/// plugin's), ``publish(_:_:)`` trims it (the engine's own; see there).
///
/// The bus keeps the last ``historyCapacity`` events it published, whatever their type and
/// at most ``historyByteBudget`` of them, so that a new subscriber may start in the past
/// (``EventReplay``): the replay and the live events that follow it are one sequence,
/// without a gap or a repeat.
public final class EventBus: Sendable {
    /// Buffered events per subscriber unless it asks otherwise.
    public static let defaultCapacity = 1024
    /// The largest buffer a subscriber may ask for.
    public static let maximumCapacity = 65_536
    /// The largest event, msgpack-encoded (its type, attributes, `seq` and `time`): 64 KiB.
    public static let maximumEventBytes = 64 * 1024
    /// The most a subscriber's buffer holds, counting events by their encoded size, whatever
    /// its capacity in events: 1 MiB. Events past it are lost (counted), as past the capacity.
    public static let maximumBufferedBytes = 1 << 20
    /// What `seq` and `time` add to an event's encoded size, at most.
    static let envelopeBytes = 64

    /// How many of the latest events the bus keeps for replay.
    public static let historyCapacity = 1000
    /// How much the kept events may weigh together, roughly (strings and bytes by their
    /// length, 16 bytes for anything else): the oldest go first. A plugin that publishes
    /// events of 1 MiB cannot make the history hold a gigabyte.
    public static let historyByteBudget = 8 << 20

    /// Roughly how many bytes `value` holds: strings and bytes by their length, 16 for
    /// anything else, summed through arrays and maps.
    static func weight(_ value: Value) -> Int {
        switch value {
        case .string(let s): return 16 + s.utf8.count
        case .binary(let b): return 16 + b.count
        case .ext(_, let data): return 16 + data.count
        case .array(let items):
            var total = 16
            for item in items { total += weight(item) }
            return total
        case .map(let entries):
            var total = 16
            for entry in entries { total += weight(entry.key) + weight(entry.value) }
            return total
        default: return 16
        }
    }

    /// A requested buffer size from the wire, clamped to `1 ... maximumCapacity`.
    public static func clampedCapacity(_ requested: Int64?) -> Int {
        Int(min(max(requested ?? Int64(defaultCapacity), 1), Int64(maximumCapacity)))
    }

    /// The encoded size of an event of `type` with `attributes`, `seq` and `time` included
    /// (counted at their largest). An attribute that cannot be encoded (a channel end)
    /// counts as too large.
    public static func encodedSize(_ type: String, _ attributes: [(String, Value)]) -> Int {
        let body: Value = .map([(key: "type", value: .string(type))] + attributes.map { (key: .string($0.0), value: $0.1) })
        guard let bytes = try? Msgpack.encode(body) else { return Int.max }
        return bytes.count + envelopeBytes
    }

    private struct Subscriber {
        var filter: EventFilter
        var capacity: Int
        /// Buffered events with their encoded sizes.
        var buffer = CircularBuffer<(event: Value, bytes: Int)>()
        var bufferedBytes = 0

        /// Starts the buffer with kept events (a replay): delivered whole, whatever the
        /// buffer's limits, since the history itself is bounded.
        mutating func replay<S: Sequence>(_ kept: S) where S.Element == Kept {
            for k in kept {
                buffer.append((event: k.event, bytes: k.bytes))
                bufferedBytes += k.bytes
            }
        }
        var lost = 0
        var waiter: CheckedContinuation<EventRecord?, Never>?
        var closed = false

        enum Offered {
            case wake(CheckedContinuation<EventRecord?, Never>, EventRecord)
            case buffered
            case lost
        }

        /// Hands `event` to the waiting reader, buffers it, or counts it lost.
        mutating func offer(_ event: Value, bytes: Int) -> Offered {
            if let waiter {
                self.waiter = nil
                guard lost > 0 else { return .wake(waiter, .event(event)) }
                // The loss comes first; the event waits in the buffer (empty, since the
                // reader was waiting).
                let n = lost
                lost = 0
                append(event, bytes: bytes)
                return .wake(waiter, .lost(n))
            }
            guard buffer.count < capacity && bufferedBytes + bytes <= EventBus.maximumBufferedBytes else {
                lost += 1
                return .lost
            }
            append(event, bytes: bytes)
            return .buffered
        }

        /// The next record for the reader, or nil after parking `waiter` (nothing to read).
        mutating func take(orPark waiter: CheckedContinuation<EventRecord?, Never>) -> EventRecord? {
            if lost > 0 && buffer.isEmpty {
                let n = lost
                lost = 0
                return .lost(n)
            }
            if let first = buffer.popFirst() {
                bufferedBytes -= first.bytes
                return .event(first.event)
            }
            self.waiter = waiter
            return nil
        }

        mutating func append(_ event: Value, bytes: Int) {
            buffer.append((event, bytes))
            bufferedBytes += bytes
        }
    }

    /// A kept event: what it was published with, and when, by the monotonic clock.
    private struct Kept {
        var type: String
        var attributes: [(String, Value)]
        var seq: UInt64
        var at: ContinuousClock.Instant
        var event: Value
        var bytes: Int
    }

    private struct State {
        var seq: UInt64 = 0
        var subscribers: [Int: Subscriber] = [:]
        var nextID = 0
        /// The latest events, oldest first from `head`: a ring of `historyCapacity` slots,
        /// `count` of them in use, weighing `bytes` (at most `historyByteBudget`).
        var ring = [Kept?](repeating: nil, count: EventBus.historyCapacity)
        var head = 0
        var count = 0
        var bytes = 0

        mutating func keep(_ kept: Kept) {
            // One event heavier than the whole budget is not kept: a replay never holds more.
            guard kept.bytes <= EventBus.historyByteBudget else { return }
            if count == ring.count { dropOldest() }
            ring[(head + count) % ring.count] = kept
            count += 1
            bytes += kept.bytes
            while bytes > EventBus.historyByteBudget { dropOldest() }
        }

        mutating func dropOldest() {
            bytes -= ring[head]?.bytes ?? 0
            ring[head] = nil
            head = (head + 1) % ring.count
            count -= 1
        }

        /// The kept events, oldest first.
        var history: [Kept] { (0..<count).compactMap { ring[(head + $0) % ring.count] } }
    }

    private let state = NIOLockedValueBox(State())
    private let lostCounter = Counter(label: "plugboard_events_lost_total")

    /// An empty bus, with no subscribers.
    public init() {}

    /// How many subscribers there are now.
    public var subscriberCount: Int { state.withLockedValue { $0.subscribers.count } }

    /// How many bytes (encoded) subscribers hold in their buffers now, all together.
    public var bufferedBytes: Int { state.withLockedValue { $0.subscribers.values.reduce(0) { $0 + $1.bufferedBytes } } }

    /// Publishes an event of `type` with `attributes` to every matching subscriber.
    ///
    /// For the engine's own events, which never fail: one over ``maximumEventBytes`` (a
    /// plugin declared thousands of jobs, an error message ran long) is trimmed instead —
    /// attributes that do not fit are left out, and `truncated` says how large it was.
    public func publish(_ type: String, _ attributes: [(String, Value)]) {
        let size = Self.encodedSize(type, attributes)
        if size <= Self.maximumEventBytes {
            deliver(type, attributes, bytes: size)
        } else {
            let trimmed = Self.trim(type, attributes, originalBytes: size)
            deliver(type, trimmed, bytes: Self.encodedSize(type, trimmed))
        }
    }

    /// Publishes like ``publish(_:_:)``, but refuses an event over ``maximumEventBytes``
    /// (what a plugin or an operator publishes).
    public func publishOrRefuse(_ type: String, _ attributes: [(String, Value)]) throws(EventTooLarge) {
        let size = Self.encodedSize(type, attributes)
        guard size <= Self.maximumEventBytes else { throw EventTooLarge(type: type, bytes: size == Int.max ? Self.maximumEventBytes + 1 : size) }
        deliver(type, attributes, bytes: size)
    }

    /// The attributes that fit, in order, each at most 1 KiB, and `truncated`: the size the
    /// whole event had.
    static func trim(_ type: String, _ attributes: [(String, Value)], originalBytes: Int) -> [(String, Value)] {
        var kept: [(String, Value)] = []
        var total = encodedSize(type, []) + 32
        for (key, value) in attributes {
            let one = encodedSize("", [(key, value)]) - envelopeBytes
            guard one <= 1024, total + one <= maximumEventBytes - 1024 else { continue }
            kept.append((key, value))
            total += one
        }
        kept.append(("truncated", .int(Int64(min(originalBytes, Int(Int64.max))))))
        return kept
    }

    private func deliver(_ type: String, _ attributes: [(String, Value)], bytes: Int) {
        let time = Self.timestamp()
        // Weighed outside the lock; the attributes are most of an event.
        var weight = 64 + type.utf8.count
        for (key, value) in attributes { weight += key.utf8.count + Self.weight(value) }
        var lostNow = 0
        let wake: [(CheckedContinuation<EventRecord?, Never>, EventRecord)] = state.withLockedValue { s in
            s.seq += 1
            let event: Value = .map([(key: "seq", value: .uint(s.seq)), (key: "time", value: .string(time)), (key: "type", value: .string(type))]
                + attributes.map { (key: .string($0.0), value: $0.1) })
            s.keep(Kept(type: type, attributes: attributes, seq: s.seq, at: .now, event: event, bytes: weight))
            var wake: [(CheckedContinuation<EventRecord?, Never>, EventRecord)] = []
            let matching = s.subscribers.compactMap { id, sub in !sub.closed && sub.filter.matches(type: type, attributes: attributes) ? id : nil }
            for id in matching {
                // Mutated in place (not copied out and back), so the buffer is never copied.
                switch s.subscribers[id]?.offer(event, bytes: bytes) {
                case .wake(let waiter, let record)?: wake.append((waiter, record))
                case .lost?: lostNow += 1
                case .buffered?, nil: break
                }
            }
            return wake
        }
        for (c, record) in wake { c.resume(returning: record) }
        if lostNow > 0 { lostCounter.increment(by: lostNow) }
    }

    /// A new subscription; events published from now on that match `filter` reach it,
    /// after the kept events `replay` asks for (those that match `filter` too, oldest
    /// first). A replay larger than `capacity` is delivered whole (it is at most
    /// ``historyCapacity`` events); live events wait behind it in the same buffer.
    public func subscribe(_ filter: EventFilter = EventFilter(), capacity: Int = EventBus.defaultCapacity, replay: EventReplay = .none) -> EventSubscription {
        let now = ContinuousClock.now
        let id = state.withLockedValue { s in
            let id = s.nextID
            s.nextID += 1
            var subscriber = Subscriber(filter: filter, capacity: max(1, capacity))
            // Under the lock that publishing takes: nothing is published between the
            // replay and the subscription, so nothing is missed or seen twice.
            switch replay {
            case .none:
                break
            case .afterSequence(let seq):
                subscriber.replay(s.history.filter { $0.seq > seq && filter.matches(type: $0.type, attributes: $0.attributes) })
            case .within(let window):
                subscriber.replay(s.history.filter { now - $0.at <= window && filter.matches(type: $0.type, attributes: $0.attributes) })
            }
            s.subscribers[id] = subscriber
            return id
        }
        return EventSubscription(bus: self, id: id)
    }

    /// The sequence number of the latest event published (0 before the first).
    public var latestSequence: UInt64 { state.withLockedValue { $0.seq } }

    fileprivate func next(_ id: Int) async -> EventRecord? {
        await withCheckedContinuation { (c: CheckedContinuation<EventRecord?, Never>) in
            let ready: EventRecord?? = state.withLockedValue { s in
                guard s.subscribers[id]?.closed == false else { return .some(nil) }
                return s.subscribers[id]?.take(orPark: c).map { .some($0) } ?? .none
            }
            if case .some(let record) = ready { c.resume(returning: record) }
        }
    }

    fileprivate func cancel(_ id: Int) {
        let waiter = state.withLockedValue { s in s.subscribers.removeValue(forKey: id)?.waiter }
        waiter?.resume(returning: nil)
    }

    /// Ends every subscription (the engine is shutting down).
    public func closeAll() {
        let waiters = state.withLockedValue { s in
            defer { s.subscribers = [:] }
            return s.subscribers.values.compactMap(\.waiter)
        }
        for w in waiters { w.resume(returning: nil) }
    }

    static func timestamp() -> String {
        Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }
}

/// One subscriber's view of the bus.
public final class EventSubscription: Sendable {
    private let bus: EventBus
    private let id: Int

    fileprivate init(bus: EventBus, id: Int) {
        self.bus = bus
        self.id = id
    }

    /// The next record, in order; nil once cancelled or the bus closed.
    public func next() async -> EventRecord? { await bus.next(id) }

    /// Stops the subscription; a waiting `next()` returns nil.
    public func cancel() { bus.cancel(id) }

    /// Sends every record to `sink` until the sink's reader goes away, the bus closes or
    /// the calling task is cancelled; then cancels the subscription. Run it in a task the
    /// caller owns.
    public func pump(to sink: Sender) async {
        await withTaskCancellationHandler {
            while let record = await next() {
                do {
                    try await sink.send(record.value)
                } catch {
                    break
                }
            }
        } onCancel: {
            cancel()
        }
        cancel()
    }
}
