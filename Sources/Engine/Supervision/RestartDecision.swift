/// What a supervisor does after its plugin ends.
public enum RestartDecision: Sendable, Hashable {
    /// Start it again after this delay (backoff with jitter).
    case restart(after: Duration)
    /// Leave it in this state (`stopped` after a clean exit, else `failed`), and why.
    case stay(PluginState, because: StayCause)

    /// Why a plugin is not restarted.
    public enum StayCause: Sendable, Hashable, CustomStringConvertible {
        /// Its restart policy does not restart after this end.
        case policy(RestartPolicy, PluginEndReason)
        /// It ended more often than the crash-loop limit allows inside the window.
        case crashLoop(ends: Int, window: Duration, last: PluginEndReason)
        /// Starting it again cannot help (its declaration conflicts with another plugin's).
        case hopeless(PluginEndReason)

        /// "ended (…) and its restart policy is never", "crash loop: 6 ends in 60.0 seconds; last: …".
        public var description: String {
            switch self {
            case .policy(let policy, let reason): return "ended (\(reason)) and its restart policy is \(policy.rawValue)"
            case .crashLoop(let ends, let window, let last): return "crash loop: \(ends) ends in \(window.short); last: \(last)"
            case .hopeless(let reason): return "\(reason); not restarted"
            }
        }
    }
}

/// One plugin's ends and the restart decision, as a value: the decision is a function of
/// the policy, this history, the end reason and the time — no clock is read and nothing
/// sleeps here, so it is tested exactly on made-up instants.
public struct RestartHistory: Sendable {
    /// One end: when, and why.
    public struct End: Sendable, Hashable {
        /// When it ended.
        public var at: ContinuousClock.Instant
        /// Why it ended.
        public var reason: PluginEndReason
    }

    /// Every end since the history was last cleared, oldest first (at most ``kept``).
    public private(set) var ends: [End] = []
    /// Failures since the plugin last ran healthy for `resetAfter`: the backoff attempt.
    public private(set) var consecutiveFailures = 0

    /// Ends kept for `plugin inspect`; older ones are dropped (the crash-loop window needs
    /// at most its `restarts + 1` latest).
    public static let kept = 100

    /// An empty history.
    public init() {}

    /// Forgets every end (`plugin restart`, `plugin enable`).
    public mutating func clear() {
        ends = []
        consecutiveFailures = 0
    }

    /// Records an end at `now` and decides what follows.
    ///
    /// - Parameters:
    ///   - reason: why the plugin ended.
    ///   - policy, backoff, crashLoop: the plugin's supervision settings.
    ///   - activeSince: when its run became active (nil if it never did): a run that lasted
    ///     `backoff.resetAfter` resets the backoff.
    ///   - now: the time of the end.
    ///   - jitter: a fraction in `-backoff.jitter ... backoff.jitter`, at random in production.
    public mutating func decide(
        after reason: PluginEndReason,
        policy: RestartPolicy, backoff: Backoff, crashLoop: CrashLoopLimit,
        activeSince: ContinuousClock.Instant?, now: ContinuousClock.Instant,
        jitter: (ClosedRange<Double>) -> Double = { Double.random(in: $0) }
    ) -> RestartDecision {
        ends.append(End(at: now, reason: reason))
        if ends.count > Self.kept { ends.removeFirst(ends.count - Self.kept) }
        if case .registrationConflict = reason { return .stay(.failed, because: .hopeless(reason)) }
        let restart: Bool
        switch policy {
        case .always: restart = true
        case .onFailure: restart = !reason.isCleanExit
        case .never: restart = false
        }
        guard restart else {
            return .stay(reason.isCleanExit ? .stopped : .failed, because: .policy(policy, reason))
        }
        let windowStart = now - crashLoop.window
        // The daemon's own shortage (EMFILE) is not the plugin's crash: it is retried with
        // backoff, and does not count toward the crash-loop limit.
        let recent = ends.filter { $0.at > windowStart && !$0.reason.isDaemonsFault }.count
        if recent > crashLoop.restarts {
            return .stay(.failed, because: .crashLoop(ends: recent, window: crashLoop.window, last: reason))
        }
        if let activeSince, now - activeSince >= backoff.resetAfter { consecutiveFailures = 0 }
        consecutiveFailures += 1
        let delay = backoff.delay(attempt: consecutiveFailures)
        guard backoff.jitter > 0 else { return .restart(after: delay) }
        return .restart(after: delay * (1 + jitter(-backoff.jitter...backoff.jitter)))
    }
}
