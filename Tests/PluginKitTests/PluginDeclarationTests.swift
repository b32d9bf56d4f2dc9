import Chan
@testable import Hooks
import Routing
import Testing
@testable import PluginKit

@Suite("PluginKit: declarations, their wire form, and answering the engine")
struct PluginDeclarationTests {
    func greeter() -> PluginDeclaration {
        var d = PluginDeclaration(name: "greeter", version: "1.0")
        d.job("greet") { argument in .string("hello, \(argument.stringValue ?? "you")") }
        d.hook("container.create", priority: 10, timeout: .milliseconds(1500), policy: .optional) { payload, _ in
            payload["veto"] == true ? .veto("asked to") : .continue(.fields(("seen", true)))
        }
        d.messages("log", priority: 3) { _, body in [(type: "log", body: body)] }
        d.calls = ["echo"]
        d.runsHooks("container.create")
        return d
    }

    @Test("the HELLO meta names jobs, hooks, pipeline types and calls, with timeouts in milliseconds")
    func wireForm() throws {
        let wire = greeter().wireValue
        #expect(wire["name"] == "greeter" && wire["version"] == "1.0")
        #expect(wire["jobs"] == ["greet"])
        #expect(wire["calls"] == ["echo", "hooks.run:container.create"], "runsHooks asks for the hook chain like a job")
        let hook = try HookOptions(wire: try #require(wire["hooks"]?.arrayValue?.first))
        #expect(hook == HookOptions(event: "container.create", phase: .mutate, priority: 10, timeout: .milliseconds(1500), policy: .optional))
        #expect(wire["pipeline"]?.arrayValue?.first?["timeout_ms"] == 10_000)
    }

    @Test("a declared timeout from the wire is clamped to one day, whatever the integer", arguments: [Int64.max, 86_400_001, -5])
    func clampedHookTimeout(ms: Int64) throws {
        let wire: Value = .fields(("event", "e"), ("phase", "mutate"), ("priority", 0), ("timeout_ms", .int(ms)), ("policy", "required"))
        let hook = try HookOptions(wire: wire)
        #expect(hook.timeout == (ms < 0 ? .zero : .seconds(86_400)))
        // And a declaration's own huge timeout goes out saturated, not trapped.
        var d = PluginDeclaration(name: "big", version: "1")
        d.hook("e", timeout: .seconds(Int64.max)) { p, _ in .continue(p) }
        #expect(d.wireValue["hooks"]?.arrayValue?.first?["timeout_ms"] == .int(.max))
    }

    @Test("answer dispatches jobs, hooks and pipeline messages, and names what it does not serve")
    func answer() async throws {
        let d = greeter()
        #expect(try await d.answer(Invocation(kind: .job, name: "greet", payload: "Ada")) == "hello, Ada")
        #expect(try await d.answer(Invocation(kind: .hook, name: "container.create", payload: .fields(("veto", false)), extra: .fields(("phase", "mutate")))) == .fields(("payload", .fields(("seen", true)))))
        #expect(try await d.answer(Invocation(kind: .hook, name: "container.create", payload: .fields(("veto", true)), extra: .fields(("phase", "mutate")))) == .fields(("veto", "asked to")))
        #expect(try await d.answer(Invocation(kind: .pipeline, name: "log", payload: "line")) == [.fields(("type", "log"), ("body", "line"))])
        await #expect {
            try await d.answer(Invocation(kind: .job, name: "nope", payload: .nil))
        } throws: { error in
            (error as? RoutingError)?.code == .unknownJob && (error as? RoutingError)?.reason.contains("greeter has no job nope") == true
        }
    }

    @Test("a hook outcome survives its wire form")
    func outcomeRoundTrip() throws {
        let outcome = HookOutcome(
            payload: .fields(("a", 1)), attribution: ["a": "p1", "mounts[0]": "p2"],
            steps: [.init(plugin: "p1", changed: ["a"]), .init(plugin: "p2", changed: ["mounts[0]"])], skipped: [(plugin: "p3", reason: "timed out")]
        )
        let back = try HookOutcome(value: outcome.value)
        #expect(back.payload == outcome.payload && back.attribution == outcome.attribution && back.steps == outcome.steps)
        #expect(back.skipped.map(\.plugin) == ["p3"] && back.skipped.map(\.reason) == ["timed out"])
        #expect(throws: RoutingError.self) { try HookOutcome(value: .fields(("steps", []))) }
    }
}
