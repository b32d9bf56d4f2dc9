import Routing
import Testing

/// The tests that keep both cores busy for a long time (floods, multi-MiB streams, tens of
/// thousands of channels or events): at most two of them run at once in the test process,
/// whatever their suites. Everything else still runs beside them.
///
/// Why: the suite runs every suite in parallel on this machine's two cores. With five or six
/// of these at once, a process another test had just started could wait more than 10 s for
/// the CPU to send its HELLO, and the daemon gave up on it (a CI failure on 2026-12-02, and
/// the same in runs with busy loops beside the suite). Two at a time still keeps the cores
/// busy, and leaves room for the light tests' processes to start.
public struct HeavyTest: TestTrait, SuiteTrait, TestScoping {
    static let gate = Limiter(limit: 2)

    public var isRecursive: Bool { true }

    public func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        // Each test case takes a place, never a suite or a test as a whole: a whole that held
        // one while its cases waited for another could deadlock the gate.
        guard testCase != nil else { return try await function() }
        try await Self.gate.run { try await function() }
    }
}

extension Trait where Self == HeavyTest {
    /// Marks a test (or each test of a suite) as one of the CPU-heavy ones: at most two run
    /// at once ([HeavyTest]).
    public static var heavy: Self { HeavyTest() }
}
