import NIOCore

/// Durations that arrive from outside — a peer's frame, an admin request, a setting — are
/// untrusted integers. These conversions never trap: they clamp to a documented range.
extension Duration {
    /// The longest timeout, delay or window Plugboard accepts from a plugin, an admin client
    /// or a setting: one day. Longer values are clamped (wire) or refused (settings).
    public static let longestAccepted: Duration = .seconds(86_400)

    /// A millisecond count from the wire, clamped to `0 ... longestAccepted`: a negative
    /// value is zero (the deadline has passed), 2^63-1 is one day.
    public static func clampedMilliseconds(_ milliseconds: Int64) -> Duration {
        let longest = Int64(longestAccepted.components.seconds) * 1000
        return .milliseconds(min(max(milliseconds, 0), longest))
    }

    /// A millisecond count from the wire, or `fallback` when absent, clamped as
    /// ``clampedMilliseconds(_:)``.
    public static func clampedMilliseconds(_ milliseconds: Int64?, default fallback: Duration) -> Duration {
        milliseconds.map(clampedMilliseconds) ?? fallback
    }

    /// A number of seconds typed by a person (a CLI flag), clamped as
    /// ``clampedMilliseconds(_:)``; NaN is zero.
    public static func clampedSeconds(_ seconds: Double) -> Duration {
        guard seconds.isFinite else { return seconds == .infinity ? longestAccepted : .zero }
        let longest = Double(longestAccepted.components.seconds)
        return .milliseconds(Int64((min(max(seconds, 0), longest) * 1000).rounded()))
    }

    /// This duration in whole milliseconds, saturating at `Int64.max` and `Int64.min`.
    public var saturatingMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return sum
    }

    /// This duration as a NIO `TimeAmount`, saturating at the largest (or smallest) amount
    /// instead of trapping on overflow.
    public var timeAmount: TimeAmount {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .nanoseconds(seconds < 0 ? .min : .max) }
        let (sum, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return .nanoseconds(seconds < 0 ? .min : .max) }
        return .nanoseconds(sum)
    }
}

extension Duration {
    /// For people: rounded to what matters — `3s`, `250ms`, `1.5s`, `2m`, `1m30s`, `1h5m`,
    /// `2d` — not `2.999998015 seconds`.
    public var short: String {
        let ms = saturatingMilliseconds
        if ms < 0 { return "-" + Duration.milliseconds(ms == .min ? .max : -ms).short }
        // Rounded divisions that cannot overflow, even at Int64.max.
        func rounded(_ value: Int64, _ unit: Int64) -> Int64 { value / unit + (value % unit >= (unit + 1) / 2 ? 1 : 0) }
        if ms < 1000 { return "\(ms)ms" }
        if ms < 10_000 {
            let tenths = rounded(ms, 100)
            return tenths % 10 == 0 ? "\(tenths / 10)s" : "\(tenths / 10).\(tenths % 10)s"
        }
        let s = rounded(ms, 1000)
        if s < 60 { return "\(s)s" }
        if s < 3600 { return s % 60 == 0 ? "\(s / 60)m" : "\(s / 60)m\(s % 60)s" }
        if s < 86_400 { let m = rounded(s, 60); return m % 60 == 0 ? "\(m / 60)h" : "\(m / 60)h\(m % 60)m" }
        let h = rounded(s, 3600)
        return h % 24 == 0 ? "\(h / 24)d" : "\(h / 24)d\(h % 24)h"
    }
}

extension Int {
    /// `self + other`, or `Int.max` / `Int.min` where the sum would overflow.
    public func addingSaturating(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        if overflow { return other > 0 ? .max : .min }
        return sum
    }
}
