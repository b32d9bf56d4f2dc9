#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// docs/PROTOCOL.md's worked example is a real exchange with plugboardd: its bytes, read
/// from the page, are replayed by an exec plugin of a real daemon.
/// (Each daemon here gets its own --admin-socket and --state-dir from `DaemonPlace`.)
@Suite("the worked example in PROTOCOL.md, against a real daemon")
struct DaemonWireTests {
    /// The frames of the "Worked example" section: direction and hex, in order.
    func workedExample() throws -> [(fromPlugin: Bool, hex: String)] {
        let text = try String(contentsOfFile: repositoryRoot + "/docs/PROTOCOL.md", encoding: .utf8)
        guard let start = text.range(of: "## Worked example"), let end = text.range(of: "### The other direction") else {
            throw DeadlineExceeded(what: "the Worked example section in docs/PROTOCOL.md")
        }
        var frames: [(Bool, String)] = []
        var direction: Bool?
        var inBlock = false
        var hex = ""
        for line in text[start.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("### ") {
                direction = line.contains("(plugin → daemon") ? true : line.contains("(daemon → plugin") ? false : nil
            } else if line.hasPrefix("```") {
                if inBlock, let direction { frames.append((direction, hex)) }
                inBlock.toggle()
                hex = ""
            } else if inBlock {
                hex += line + " "
            }
        }
        return frames
    }

    @Test("the plugin's frames, written as shown, make the daemon send exactly the frames shown")
    func replayWorkedExample() async throws {
        let frames = try workedExample()
        #expect(frames.count == 6, "six frames in the worked example")
        let send = frames.filter(\.fromPlugin).map(\.hex).joined()
        let expect = frames.filter { !$0.fromPlugin }.map(\.hex).joined()
        let place = DaemonPlace("worked")
        let daemon = try await place.startDaemon([
            "--plugin-exec", "echoer=\(try builtExecutable("plugboard-test-peer")) replay '\(send)' '\(expect)'",
        ])
        try await whileRunning(daemon) {
            let said = try await withDeadline(30, "the replay's verdict") { await daemon.log.waitFor("replay: ") }
            #expect(said?.contains("replay: matched 94 bytes") == true, "\(said ?? "no line")")
        }
        await place.stop(daemon)
    }
}
