import Chan
import CoreMetrics
import Foundation
import NIOConcurrencyHelpers

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
/// Publishing never waits: each subscriber has a bounded buffer, and an event that does
/// not fit is counted for that subscriber, who receives an `events.lost` record with the
/// count before its next event. Every event has a sequence number, so order is checkable.
///
/// The bus keeps the last ``historyCapacity`` events it published, whatever their type and
/// at most ``historyByteBudget`` of them, so that a new subscriber may start in the past (``EventReplay``): the replay and the live
/// events that follow it are one sequence, without a gap or a repeat.
public final class EventBus: Sendable {
    /// Buffered events per subscriber unless it asks otherwise.
    public static let defaultCapacity = 1024
    /// The largest buffer a subscriber may ask for.
    public static let maximumCapacity = 65_536
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

    private struct Subscriber {
        var filter: EventFilter
        var capacity: Int
        var buffer: [Value] = []
        var lost = 0
        var waiter: CheckedContinuation<EventRecord?, Never>?
        var closed = false
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

    /// Publishes an event of `type` with `attributes` to every matching subscriber.
    public func publish(_ type: String, _ attributes: [(String, Value)]) {
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
            for (id, var sub) in s.subscribers where !sub.closed && sub.filter.matches(type: type, attributes: attributes) {
                if let waiter = sub.waiter {
                    sub.waiter = nil
                    if sub.lost > 0 {
                        // The loss comes first; the event waits in the buffer.
                        wake.append((waiter, .lost(sub.lost)))
                        sub.lost = 0
                        sub.buffer.append(event)
                    } else {
                        wake.append((waiter, .event(event)))
                    }
                } else if sub.buffer.count < sub.capacity {
                    sub.buffer.append(event)
                } else {
                    sub.lost += 1
                    lostNow += 1
                }
                s.subscribers[id] = sub
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
                subscriber.buffer = s.history.filter { $0.seq > seq && filter.matches(type: $0.type, attributes: $0.attributes) }.map(\.event)
            case .within(let window):
                subscriber.buffer = s.history.filter { now - $0.at <= window && filter.matches(type: $0.type, attributes: $0.attributes) }.map(\.event)
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
                guard var sub = s.subscribers[id], !sub.closed else { return .some(nil) }
                defer { s.subscribers[id] = sub }
                if sub.lost > 0 && sub.buffer.isEmpty {
                    let n = sub.lost
                    sub.lost = 0
                    return .some(.lost(n))
                }
                if !sub.buffer.isEmpty {
                    let first = sub.buffer.removeFirst()
                    return .some(.event(first))
                }
                sub.waiter = c
                return .none
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
