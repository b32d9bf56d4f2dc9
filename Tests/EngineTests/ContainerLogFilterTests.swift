import Chan
import Hooks
import Pipeline
import PluginKit
import Routing
import Testing
import TestSupport
@testable import ContainersPlugin

/// An engine whose every request fails, as a broken or timed-out pipeline plugin makes it.
struct FailingEngine: EngineCalls {
    func call(_ job: String, _ argument: Value, timeout: Duration) async throws -> Value { throw RoutingError(.handlerFailed, "boom") }
    func runHooks(_ event: String, payload: Value, object: String) async throws -> HookOutcome { throw RoutingError(.handlerFailed, "boom") }
    func notify(_ event: String, payload: Value, object: String) async throws { throw RoutingError(.handlerFailed, "boom") }
    func callBest(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value { throw RoutingError(.noProvider, "none") }
    func callAll(_ point: String, _ argument: Value, timeout: Duration) async throws -> Value { throw RoutingError(.noProvider, "none") }
    func makeByteStream() async throws -> (ByteStreamWriter, ByteStreamReader) { throw RoutingError(.rejected, "none") }
    func callProvider(_ point: String, provider: String, _ argument: Value, timeout: Duration) async throws -> Value { throw RoutingError(.noProvider, "none") }
    func send(_ type: String, _ body: Value) async throws -> PipelineResult { throw RoutingError(.timeout, "plugin slow did not answer container.log within 10 s") }
}

@Suite("container logs through the pipeline: failures")
struct ContainerLogFilterTests {
    @Test("when the pipeline fails, the line is kept as the container wrote it")
    func failingPipelineKeepsTheLine() async {
        let filter = ContainersPlugin.logFilter(engine: FailingEngine(), logger: quietLogger)
        #expect(await filter("c1", .stdout, "password=hunter2 is still here") == ["password=hunter2 is still here"])
    }
}
