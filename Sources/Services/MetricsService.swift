import Chan
import CoreMetrics
import Engine
import PluginKit
import Prometheus

/// `metrics`: the daemon's metrics in the Prometheus text exposition format.
///
/// Counters and histograms are recorded where things happen (the hub: calls, errors,
/// timeouts, latency per job and plugin; supervisors: restarts, frame errors; hooks: chain
/// outcomes; the event bus: lost events) through swift-metrics, backed by swift-prometheus.
/// Gauges (plugins by state, calls in flight per plugin, event subscribers) are read at
/// each scrape. Job `metrics.scrape` → the text; `plugboard metrics` and
/// `--metrics-listen` serve it.
public struct MetricsPlugin: Plugin {
    public let registry: PrometheusCollectorRegistry
    let engine: Engine

    public init(registry: PrometheusCollectorRegistry, engine: Engine) {
        self.registry = registry
        self.engine = engine
    }

    public func declare(_ context: PluginContext) -> PluginDeclaration {
        var d = PluginDeclaration(name: "metrics", version: "1.0.0")
        let scrape = scrape
        d.job("metrics.scrape") { _ in .string(await scrape()) }
        return d
    }

    /// Refreshes the gauges and renders everything.
    @Sendable public func scrape() async -> String {
        let statuses = await engine.status()
        var byState: [String: Int] = [:]
        for state in ["starting", "active", "restarting", "failed", "disabled", "stopped"] { byState[state] = 0 }
        for s in statuses { byState[s.state.rawValue, default: 0] += 1 }
        for (state, n) in byState {
            Gauge(label: "plugboard_plugins", dimensions: [("state", state)]).record(n)
        }
        var inFlight: [String: Int] = [:]
        for s in statuses { inFlight[s.name] = 0 }
        for (owner, n) in engine.hub.inFlight.countsByOwner { inFlight[owner, default: 0] += n }
        for (owner, n) in engine.hooks.inFlight.countsByOwner { inFlight[owner, default: 0] += n }
        for (plugin, n) in inFlight {
            Gauge(label: "plugboard_inflight_calls", dimensions: [("plugin", plugin)]).record(n)
        }
        Gauge(label: "plugboard_event_subscribers").record(engine.bus.subscriberCount)
        Gauge(label: "plugboard_event_buffered_bytes").record(engine.bus.bufferedBytes)
        return registry.emitToString()
    }
}
