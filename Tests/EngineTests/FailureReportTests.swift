import Chan
import Routing
import Testing
import TestSupport
@testable import Engine

/// Every failure says what happened: the caller hears the cause, not its side effect.
@Suite("failures say what happened", .serialized)
struct FailureReportTests {
    @Test("the caller of a plugin cut off for breaking the protocol hears the violation, not the SIGTERM that followed")
    func violationIsTheReason() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([try testPlugin("liar", "provides=liar.work")])
        await #expect {
            try await engine.hub.call("liar.garbage", timeout: .seconds(10))
        } throws: { error in
            let reason = (error as? RoutingError)?.reason ?? "\(error)"
            return reason.contains("broke the protocol") && !reason.contains("signal")
        }
        await engine.shutdown(grace: .seconds(1))
    }

    @Test("a plugin that never sends HELLO fails to start with a handshake timeout, not 'killed by signal 9', and says whether it was sleeping or running")
    func noHello() async throws {
        let engine = Engine(logger: quietLogger)
        let silent = PluginSpec(name: "silent", kind: .exec(command: "/bin/sleep", arguments: ["30"]), startTimeout: .milliseconds(300))
        await #expect {
            try await engine.boot([silent])
        } throws: { error in
            let reason = (error as? EngineError)?.reason ?? "\(error)"
            return reason.contains("plugin silent sent no HELLO within its start timeout (300ms)")
                && reason.contains("it was sleeping and had used 0.0")
        }
        // One that spins instead: starved or busy, it was running, and the CPU it used says which.
        let spinning = PluginSpec(name: "spinning", kind: .exec(command: "/bin/sh", arguments: ["-c", "while :; do :; done"]), startTimeout: .milliseconds(300))
        await #expect {
            try await engine.boot([spinning])
        } throws: { error in
            let reason = (error as? EngineError)?.reason ?? "\(error)"
            return reason.contains("plugin spinning sent no HELLO within its start timeout (300ms)") && reason.contains("it was running and had used")
        }
    }

    @Test("an answer too large for one frame reaches the caller as an error that says so, with its own code")
    func unsendableAnswer() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([try testPlugin("big", "")])
        await #expect {
            try await engine.hub.call("big.big", .fields(("size", 2_000_000)), timeout: .seconds(10))
        } throws: { error in
            let e = error as? RoutingError
            return e?.wireCode == "reply.unsendable" && e?.reason.contains("could not send its answer to job big.big") == true
                && e?.reason.contains("byte stream") == true
        }
        #expect(try await engine.hub.call("big.big", .fields(("size", 1000))) == .binary([UInt8](repeating: 0x42, count: 1000)), "the plugin serves on")
        await engine.shutdown(grace: .seconds(1))
    }
}
