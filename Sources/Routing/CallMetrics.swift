import CoreMetrics
import NIOConcurrencyHelpers

/// Per job and plugin: calls, errors (by code), timeouts and a latency histogram, through
/// swift-metrics. What backs them is the executable's choice (plugboardd bootstraps
/// swift-prometheus); without a bootstrap they cost next to nothing.
///
/// Handles are made once per (job, plugin) and kept, so a call does one dictionary lookup.
public final class CallMetrics: Sendable {
    private struct Handles: Sendable {
        let calls: Counter
        let timeouts: Counter
        let duration: Timer
    }

    /// By job: the plugin serving it and its handles (a job has one owner at a time, so the
    /// lookup needs no key built per call).
    private let handles = NIOLockedValueBox<[String: (plugin: String, handles: Handles)]>([:])
    private let errors = NIOLockedValueBox<[String: Counter]>([:])
    private let unknownJobs = Counter(label: "plugboard_unknown_job_calls_total")

    /// Metrics with no handles yet; each (job, plugin) gets its own on its first call.
    public init() {}

    private func handles(_ job: String, _ plugin: String) -> Handles {
        if let cached = handles.withLockedValue({ $0[job] }), cached.plugin == plugin { return cached.handles }
        // First call of this job by this plugin: make the handles outside the lock (the
        // metrics factory takes locks of its own).
        let dimensions = [("job", job), ("plugin", plugin)]
        let made = Handles(
            calls: Counter(label: "plugboard_calls_total", dimensions: dimensions),
            timeouts: Counter(label: "plugboard_call_timeouts_total", dimensions: dimensions),
            duration: Timer(label: "plugboard_call_duration_seconds", dimensions: dimensions)
        )
        handles.withLockedValue { $0[job] = (plugin, made) }
        return made
    }

    /// One finished call: `error` is nil on success, else the routing error's code.
    public func record(job: String, plugin: String, nanoseconds: Int64, error: RoutingError.Code?) {
        let h = handles(job, plugin)
        h.calls.increment()
        h.duration.recordNanoseconds(nanoseconds)
        guard let error else { return }
        if error == .timeout { h.timeouts.increment() }
        let key = job + "\u{0}" + plugin + "\u{0}" + "\(error)"
        let counter = errors.withLockedValue { e in
            if let c = e[key] { return c }
            let c = Counter(label: "plugboard_call_errors_total", dimensions: [("job", job), ("plugin", plugin), ("code", RoutingError(error, "").wireCode)])
            e[key] = c
            return c
        }
        counter.increment()
    }

    /// A call to a job nobody serves (not labelled by job: the names are the caller's).
    public func recordUnknownJob() {
        unknownJobs.increment()
    }
}
