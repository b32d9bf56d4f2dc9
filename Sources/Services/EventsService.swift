import Chan
import Engine
import PluginKit

/// `events`: publish/subscribe of every engine event and of events plugins publish.
///
/// - `events.subscribe {"sink": SENDER, "types"?: [..], "attributes"?: {K: V}, "buffer"?: N}`:
///   events matching the filter flow to `sink`. The subscriber's buffer holds `buffer`
///   events (default 1024) and at most ``EventBus/maximumBufferedBytes`` of them; when it
///   overflows the subscriber receives `{"type": "events.lost", "count": N}` before the
///   next event. A slow subscriber never blocks the engine or other subscribers.
///   `"since_seq": N` starts with the events the bus keeps (the last
///   ``EventBus/historyCapacity``) whose `seq` is greater than N; `"since_ms": N` with
///   those published no longer than N ms ago.
/// - `events.publish {"type": T, "attributes"?: {K: V}}`: publishes an event, with
///   `source` = the calling plugin ("operator" from the admin socket). The engine's own
///   types (plugin.*, registration.*, hook.*, container.*, events.*) are refused, and so
///   is an event over ``EventBus/maximumEventBytes`` encoded (`events.too-large`).
public struct EventsPlugin: Plugin {
    /// Types only the engine publishes.
    public static let reservedPrefixes = ["plugin.", "registration.", "hook.", "container.", "events."]

    let bus: EventBus

    public init(bus: EventBus) {
        self.bus = bus
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "events", version: "1.0.0")
        let bus = self.bus
        d.job("events.subscribe") { argument in
            guard case .channel(.sender(let sink))? = argument["sink"] else {
                throw EngineError(.badDeclaration, "events.subscribe needs {\"sink\": a channel to send events on}")
            }
            let capacity = EventBus.clampedCapacity(argument["buffer"]?.intValue)
            let replay: EventReplay
            if let seq = argument["since_seq"], seq != .nil {
                guard let n = seq.uintValue else {
                    throw EngineError(.badDeclaration, "events.subscribe's since_seq is a sequence number (0 or more)")
                }
                replay = .afterSequence(n)
            } else if let ms = argument["since_ms"]?.intValue {
                replay = .within(.clampedMilliseconds(ms))
            } else {
                replay = .none
            }
            let subscription = bus.subscribe(try EventFilter(wire: argument), capacity: capacity, replay: replay)
            // Goes on after this job answers, owned by the subscriber's session: it ends when
            // the subscriber stops reading, its session ends, or the bus closes.
            sink.owningSession.tasks.run { await subscription.pump(to: sink) }
            return "subscribed"
        }
        d.job("events.publish", withCall: { argument, call in
            guard let type = argument["type"]?.stringValue, !type.isEmpty else {
                throw EngineError(.badDeclaration, "events.publish needs {\"type\": NAME, \"attributes\": {...}}")
            }
            if let reserved = Self.reservedPrefixes.first(where: { type.hasPrefix($0) }) {
                throw EngineError(.permissionDenied, "event types starting with \(reserved) are the engine's; publish under your own prefix")
            }
            var attributes: [(String, Value)] = [("source", .string(call.caller ?? "operator"))]
            for entry in argument["attributes"]?.mapValue ?? [] {
                if let k = entry.key.stringValue, !["seq", "time", "type", "source"].contains(k) { attributes.append((k, entry.value)) }
            }
            do throws(EventTooLarge) {
                try bus.publishOrRefuse(type, attributes)
            } catch {
                throw PluginError(code: "events.too-large", message: error.description)
            }
            return "published"
        })
        return d
    }
}
