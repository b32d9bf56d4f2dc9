import Chan
import NIOConcurrencyHelpers
import Routing
import Testing
import TestSupport
@testable import Pipeline

@Suite("pipeline: the proposal's routing rules")
struct PipelineTests {
    /// A handler that appends its name to a string body and passes the message on.
    func appender(_ name: String) -> Participant {
        .inProcess(name) { invocation in
            .array([PipelineMessage(type: invocation.name, body: .string((invocation.payload.stringValue ?? "") + "|" + name)).wireValue])
        }
    }

    @Test("an optional step that fails is skipped and recorded, the message going on as it was; a required one fails the run")
    func stepPolicy() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        pipeline.register(type: "log", priority: 30, by: appender("first"))
        pipeline.register(type: "log", priority: 20, policy: .optional, by: .inProcess("flaky") { _ in throw RoutingError(.handlerFailed, "flaky broke") })
        pipeline.register(type: "log", priority: 10, by: appender("last"))
        let result = try await pipeline.route(PipelineMessage(type: "log", body: "x"))
        #expect(result.final == [PipelineMessage(type: "log", body: "x|first|last")])
        #expect(result.plugins == ["first", "last"])
        #expect(result.skipped.map(\.plugin) == ["flaky"] && result.skipped.first?.reason.contains("flaky broke") == true)
        let wire = try PipelineResult(value: result.value)
        #expect(wire.skipped.map(\.plugin) == ["flaky"])

        pipeline.register(type: "log", priority: 20, policy: .required, by: .inProcess("flaky") { _ in throw RoutingError(.handlerFailed, "flaky broke") })
        await #expect { try await pipeline.route(PipelineMessage(type: "log", body: "y")) } throws: {
            ($0 as? RoutingError)?.reason.contains("flaky broke") == true
        }
    }

    @Test("a message goes to the highest priority first; equal priorities go by plugin name")
    func priorityOrder() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        pipeline.register(type: "text", priority: 10, by: appender("c"))
        pipeline.register(type: "text", priority: 20, by: appender("z"))
        pipeline.register(type: "text", priority: 10, by: appender("a"))
        let result = try await pipeline.route(PipelineMessage(type: "text", body: "start"))
        #expect(result.plugins == ["z", "a", "c"])
        #expect(result.final == [PipelineMessage(type: "text", body: "start|z|a|c")])
    }

    @Test("a message never returns to a plugin that already processed it in this run")
    func neverReturns() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        let calls = NIOLockedValueBox<[String: Int]>([:])
        for name in ["one", "two"] {
            pipeline.register(type: "text", priority: 0, by: .inProcess(name) { invocation in
                calls.withLockedValue { $0[name, default: 0] += 1 }
                // Each returns two messages of the same type: both continue, neither comes back.
                return .array([
                    PipelineMessage(type: "text", body: .string("\(invocation.payload.stringValue ?? "")>\(name)a")).wireValue,
                    PipelineMessage(type: "text", body: .string("\(invocation.payload.stringValue ?? "")>\(name)b")).wireValue,
                ])
            })
        }
        let result = try await pipeline.route(PipelineMessage(type: "text", body: "m"))
        #expect(calls.withLockedValue { $0 } == ["one": 1, "two": 2])
        #expect(result.final.map { $0.body } == ["m>onea>twoa", "m>onea>twob", "m>oneb>twoa", "m>oneb>twob"])
        #expect(result.plugins == ["one", "two", "two"])
    }

    @Test("other types start their own run, and never go back to the plugin that produced them")
    func otherTypesStartNewRuns() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        // "producer" handles text and is also registered for notes, with the highest priority.
        pipeline.register(type: "text", priority: 100, by: .inProcess("producer") { invocation in
            .array([
                PipelineMessage(type: "text", body: invocation.payload).wireValue,
                PipelineMessage(type: "note", body: "made by producer").wireValue,
            ])
        })
        pipeline.register(type: "note", priority: 100, by: .inProcess("producer") { _ in
            Issue.record("a note went back to the plugin that produced it")
            return .array([])
        })
        pipeline.register(type: "note", priority: 1, by: .inProcess("archivist") { invocation in
            .array([PipelineMessage(type: "note", body: .string("archived: \(invocation.payload.stringValue ?? "")")).wireValue])
        })
        let result = try await pipeline.route(PipelineMessage(type: "text", body: "hello"))
        #expect(result.plugins == ["producer", "archivist"])
        #expect(Set(result.final) == [PipelineMessage(type: "text", body: "hello"), PipelineMessage(type: "note", body: "archived: made by producer")])
        #expect(result.path[1].run == 1, "the note is its own run")
    }

    @Test("a handler that returns nothing consumes the message")
    func consumed() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        pipeline.register(type: "spam", priority: 0, by: .inProcess("filter") { _ in .array([]) })
        let result = try await pipeline.route(PipelineMessage(type: "spam", body: "buy now"))
        #expect(result.final.isEmpty)
        #expect(result.plugins == ["filter"])
        let unrouted = try await pipeline.route(PipelineMessage(type: "ham", body: 1))
        #expect(unrouted.final == [PipelineMessage(type: "ham", body: 1)])
        #expect(unrouted.path.isEmpty)
    }

    @Test("a loop between plugins ends with a clear error, not a hang")
    func loopIsBounded() async throws {
        let pipeline = Pipeline(limits: .init(maxHops: 20), logger: quietLogger)
        pipeline.register(type: "ping", priority: 0, by: .inProcess("pinger") { _ in .array([PipelineMessage(type: "pong", body: .nil).wireValue]) })
        pipeline.register(type: "pong", priority: 0, by: .inProcess("ponger") { _ in .array([PipelineMessage(type: "ping", body: .nil).wireValue]) })
        try await withDeadline {
            await #expect {
                try await pipeline.route(PipelineMessage(type: "ping", body: .nil))
            } throws: { error in
                let e = error as? RoutingError
                return e?.code == .hopLimit && e?.reason.contains("pinger(ping) → ponger(pong)") == true
            }
        }
    }

    @Test("a flood of messages ends with a fan-out error")
    func fanOutIsBounded() async throws {
        let pipeline = Pipeline(limits: .init(maxHops: 64, maxMessages: 100), logger: quietLogger)
        pipeline.register(type: "seed", priority: 0, by: .inProcess("multiplier") { _ in
            .array((0..<500).map { PipelineMessage(type: "item", body: .int(Int64($0))).wireValue })
        })
        await #expect { try await pipeline.route(PipelineMessage(type: "seed", body: .nil)) } throws: { ($0 as? RoutingError)?.code == .fanOutLimit }
    }

    @Test("an answer that is not a list of messages is a clear error")
    func badAnswer() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        pipeline.register(type: "x", priority: 0, by: .inProcess("liar") { _ in "not a list" })
        await #expect { try await pipeline.route(PipelineMessage(type: "x", body: .nil)) } throws: { error in
            let e = error as? RoutingError
            return e?.code == .badAnswer && e?.plugin == "liar"
        }
    }

    @Test("registrations are listed by type, in routing order")
    func listing() {
        let pipeline = Pipeline(logger: quietLogger)
        pipeline.register(type: "b", priority: 1, by: appender("y"))
        pipeline.register(type: "a", priority: 1, by: appender("x"))
        pipeline.register(type: "b", priority: 5, by: appender("z"))
        #expect(pipeline.allRegistrations.map { "\($0.type):\($0.owner):\($0.priority)" } == ["a:x:1", "b:z:5", "b:y:1"])
    }
}

@Suite("pipeline with a real subprocess participant", .serialized)
struct PipelineSubprocessTests {
    @Test("a subprocess takes its place in the chain by priority, and its other-type output starts a run")
    func subprocessInChain() async throws {
        let pipeline = Pipeline(logger: quietLogger)
        let (sub, peer) = try await PeerProcess.participant("sub")
        pipeline.register(type: "text", priority: 50, by: .inProcess("first") { invocation in
            .array([PipelineMessage(type: "text", body: .string((invocation.payload.stringValue ?? "") + "|first")).wireValue])
        })
        pipeline.register(type: "text", priority: 40, by: sub)
        pipeline.register(type: "note", priority: 0, by: .inProcess("notes") { invocation in .array([]) })
        let result = try await withDeadline(60) {
            try await pipeline.route(PipelineMessage(type: "text", body: "go split"))
        }
        #expect(result.plugins == ["first", "sub", "notes"])
        #expect(result.final == [PipelineMessage(type: "text", body: "go split|first|sub")])
        #expect(result.path[2].input == PipelineMessage(type: "note", body: "from sub"))
        await peer.stop()
    }
}
