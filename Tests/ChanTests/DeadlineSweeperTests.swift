import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing
@testable import Chan

/// The deadline facility on an injected clock: an EmbeddedEventLoop and a manual "now"
/// advanced together, so each deadline is checked exactly, without waiting.
@Suite("DeadlineSweeper on an injected clock")
struct DeadlineSweeperTests {
    final class ManualClock: Sendable {
        let value = NIOLockedValueBox(NIODeadline.uptimeNanoseconds(0))
        let loop: EmbeddedEventLoop
        init(_ loop: EmbeddedEventLoop) { self.loop = loop }
        func advance(to milliseconds: Int64) {
            let t = NIODeadline.uptimeNanoseconds(UInt64(milliseconds) * 1_000_000)
            value.withLockedValue { $0 = t }
            loop.advanceTime(to: t)
        }
    }

    @Test("each action fires at its deadline, not before; a cancelled one never fires")
    func firesAtDeadline() {
        let loop = EmbeddedEventLoop()
        let clock = ManualClock(loop)
        let sweeper = DeadlineSweeper(eventLoop: loop, now: { clock.value.withLockedValue { $0 } })
        let fired = NIOLockedValueBox<[String]>([])
        sweeper.schedule(in: .milliseconds(100)) { fired.withLockedValue { $0.append("a") } }
        let b = sweeper.schedule(in: .milliseconds(300)) { fired.withLockedValue { $0.append("b") } }
        sweeper.schedule(in: .milliseconds(200)) { fired.withLockedValue { $0.append("c") } }
        clock.advance(to: 99)
        #expect(fired.withLockedValue { $0 } == [])
        clock.advance(to: 100)
        #expect(fired.withLockedValue { $0 } == ["a"])
        sweeper.cancel(b)
        clock.advance(to: 250)
        #expect(fired.withLockedValue { $0 } == ["a", "c"])
        clock.advance(to: 10_000)
        #expect(fired.withLockedValue { $0 } == ["a", "c"], "the cancelled deadline fired")
    }

    @Test("a timeout of Duration.seconds(Int64.max) saturates instead of trapping, and never fires early")
    func hugeTimeout() {
        let loop = EmbeddedEventLoop()
        let clock = ManualClock(loop)
        let sweeper = DeadlineSweeper(eventLoop: loop, now: { clock.value.withLockedValue { $0 } })
        let fired = NIOLockedValueBox(false)
        sweeper.schedule(in: .seconds(Int64.max)) { fired.withLockedValue { $0 = true } }
        clock.advance(to: 86_400_000 * 365)
        #expect(!fired.withLockedValue { $0 })
        #expect(Duration.seconds(Int64.max).timeAmount == .nanoseconds(.max))
        #expect(Duration.seconds(-Int64.max).timeAmount == .nanoseconds(.min))
        #expect(Duration.clampedMilliseconds(.max) == .seconds(86_400))
        #expect(Duration.clampedMilliseconds(-1) == .zero)
        #expect(Duration.clampedSeconds(.nan) == .zero && Duration.clampedSeconds(.infinity) == .seconds(86_400))
    }
}

@Suite("durations for people")
struct ShortDurationTests {
    @Test("rounded to what matters", arguments: [
        (Duration.nanoseconds(2_999_998_015), "3s"), (.milliseconds(250), "250ms"), (.milliseconds(1500), "1.5s"),
        (.seconds(90), "1m30s"), (.seconds(120), "2m"), (.seconds(3900), "1h5m"), (.seconds(172_800), "2d"), (.zero, "0ms"),
        (.seconds(Int64.max), "106751991167d7h"),
    ])
    func short(_ duration: Duration, _ text: String) {
        #expect(duration.short == text)
    }
}
