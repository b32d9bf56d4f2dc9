#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// The pipeline in use under a real daemon: the CLI and a plugin send messages in, two exec
/// plugins handle them in priority order, and a returned alert starts its own run.
@Suite("pipeline send: the CLI and plugins route messages through real plugins", .serialized)
struct PipelineDaemonTests {
    let place = DaemonPlace("pipeline")

    func start() async throws -> Daemon {
        let plugin = try builtExecutable("plugboard-test-plugin")
        return try await place.startDaemon([
            "--plugin-exec", "p1=\(plugin) pipeline=note:20 sends=note",
            "--plugin-exec", "p2=\(plugin) pipeline=note:10,alert:5",
        ])
    }

    func json(_ text: String) throws -> Value {
        try JSONDecoder().decode(Value.self, from: Data(text.utf8))
    }

    /// The final messages of a printed run, as "TYPE BODY" (map order aside).
    func finals(_ text: String) throws -> [String] {
        (try json(text)["final"]?.arrayValue ?? []).map { "\($0["type"]?.stringValue ?? "?") \($0["body"]?.stringValue ?? $0["body"]?.description ?? "")" }
    }

    @Test("plugboard pipeline send prints the path in priority order; an alert a handler returns is routed as a run of its own")
    func cliSend() async throws {
        let daemon = try await start()
        try await whileRunning(daemon) {
            let listed = try await place.cli(["pipeline"])
            #expect(listed.out.contains("note") && listed.out.contains("p1") && listed.out.contains("alert"), "\(listed.out)")
            let sent = try await place.cli(["pipeline", "send", "note", #""hello alert""#, "--format", "json"])
            #expect(sent.status == .exited(0), "\(sent.err)")
            let run = try json(sent.out)
            let path = run["path"]?.arrayValue ?? []
            #expect(path.map { "\($0["run"]?.intValue ?? -1):\($0["plugin"]?.stringValue ?? "")/\($0["input"]?["type"]?.stringValue ?? "")" } == ["0:p1/note", "0:p2/note", "1:p2/alert"])
            // p2 also sees "alert" in the note it handles: that alert starts run 2, which p2
            // (already on its path) does not take, so it comes out as p1 left it.
            #expect(try finals(sent.out) == ["note hello alert+p1+p2", "alert hello alert+p1", "alert hello alert+p2"])
            let table = try await place.cli(["pipeline", "send", "note", #""plain""#])
            #expect(table.out.contains("p1") && table.out.contains(#"out: note "plain+p1+p2""#), "\(table.out)")
            // A type nobody handles comes straight out.
            let untouched = try await place.cli(["pipeline", "send", "other", "1", "--format", "json"])
            #expect(try finals(untouched.out) == ["other 1"] && (try json(untouched.out)["path"]?.arrayValue?.isEmpty) == true)
        }
        await place.stop(daemon)
    }

    @Test("a plugin sends into the pipeline through PluginKit when granted, and is refused when not")
    func pluginSend() async throws {
        let daemon = try await start()
        try await whileRunning(daemon) {
            let sent = try await place.cli(["call", "p1.send", #"{"type": "note", "body": "from p1"}"#])
            #expect(sent.status == .exited(0), "\(sent.err)")
            #expect(try finals(sent.out) == ["note from p1+p1+p2"])
            // Added at run time, it asked to send notes but was not granted it.
            let plugin = try builtExecutable("plugboard-test-plugin")
            #expect(try await place.cli(["plugin", "add", "p3", "--exec", "\(plugin) sends=note"]).status == .exited(0))
            let refused = try await place.cli(["call", "p3.send", #"{"type": "note", "body": "x"}"#])
            #expect(refused.status != .exited(0))
            #expect(refused.err.contains("may not send note messages into the pipeline: it asked for it but was not granted it"), "\(refused.err)")
            #expect(try await place.cli(["plugin", "grant", "p3", "pipeline.send:note"]).status == .exited(0))
            let granted = try await place.cli(["call", "p3.send", #"{"type": "note", "body": "y"}"#])
            #expect(try finals(granted.out) == ["note y+p1+p2"], "\(granted.err)")
        }
        await place.stop(daemon)
    }
}
