#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import PluginKit
import TestSupport
@testable import Engine

/// A job's result can be a byte stream: it reaches the admin caller through the daemon,
/// directly or through another plugin, intact.
@Suite("byte streams in results, through the daemon", .serialized)
struct StreamResultTests {
    let place = DaemonPlace("streams")

    /// Runs the CLI with stdout into a file (8 MiB does not belong in a String).
    func callToFile(_ arguments: [String], _ file: String) async throws -> Spawn.ExitStatus {
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        let err = try PipeDescriptors.make()
        let process = try ProcessSpawner.spawn(SpawnOptions(
            executable: try builtExecutable("plugboard"), arguments: arguments + ["--socket", place.socket],
            environment: childEnvironment(["PATH": "/usr/bin:/bin"]), fileDescriptors: [1: fd, 2: err.writeEnd]
        ))
        close(fd)
        close(err.writeEnd)
        let said = await readToEnd(err.readEnd)
        let status = await process.waitForExit()
        #expect(said.isEmpty, "stderr: \(said)")
        return status
    }

    func expectPattern(_ file: String, size: Int) throws {
        let data = try #require(FileManager.default.contents(atPath: file))
        #expect(data.count == size)
        let wrong = data.enumerated().first { $0.element != UInt8($0.offset % 251) }
        #expect(wrong == nil, "byte \(wrong?.offset ?? -1) differs")
    }

    @Test("a job returns a byte stream of 8 MiB to plugboard call, directly and through a plugin that calls it", .heavy)
    func eightMiB() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin-exec", "src=\(plugin)", "--plugin-exec", "relay=\(plugin) calls=src.bytes"])
        try await whileRunning(daemon) {
            let size = 8 * 1024 * 1024
            let direct = place.dir + "-direct.bin"
            defer { unlink(direct) }
            #expect(try await callToFile(["call", "src.bytes", #"{"size": \#(size)}"#], direct) == .exited(0))
            try expectPattern(direct, size: size)
            let relayed = place.dir + "-relayed.bin"
            defer { unlink(relayed) }
            #expect(try await callToFile(["call", "relay.call", #"{"job": "src.bytes", "argument": {"size": \#(size)}}"#], relayed) == .exited(0))
            try expectPattern(relayed, size: size)
        }
        await place.stop(daemon)
    }

    @Test("plugboard call --stdin hands the job a byte stream of the CLI's stdin")
    func stdinStream() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon(["--plugin-exec", "sink=\(plugin)"])
        try await whileRunning(daemon) {
            let input = place.dir + "-in.bin"
            defer { unlink(input) }
            let bytes = (0..<300_000).map { UInt8($0 % 251) }
            #expect(FileManager.default.createFile(atPath: input, contents: Data(bytes)))
            let expectedSum = bytes.reduce(0) { ($0 + Int($1)) % 1_000_003 }
            let fd = open(input, O_RDONLY)
            try #require(fd >= 0)
            let out = try PipeDescriptors.make()
            let err = try PipeDescriptors.make()
            let process = try ProcessSpawner.spawn(SpawnOptions(
                executable: try builtExecutable("plugboard"),
                arguments: ["call", "sink.count", #"{"label": "upload"}"#, "--stdin", "--socket", place.socket],
                environment: childEnvironment(["PATH": "/usr/bin:/bin"]), fileDescriptors: [0: fd, 1: out.writeEnd, 2: err.writeEnd]
            ))
            close(fd)
            close(out.writeEnd)
            close(err.writeEnd)
            async let o = readToEnd(out.readEnd)
            async let e = readToEnd(err.readEnd)
            let (stdout, stderr) = await (o, e)
            #expect(await process.waitForExit() == .exited(0), "\(stderr)")
            let answer = try JSONDecoder().decode(Value.self, from: Data(stdout.utf8))
            #expect(answer["size"]?.intValue == 300_000 && answer["sum"]?.intValue == Int64(expectedSum) && answer["label"] == "upload", "\(stdout)")
        }
        await place.stop(daemon)
    }

    /// A built-in that answers with a byte stream of `size` bytes.
    struct Streamer: Plugin {
        func declare(_ context: PluginContext) -> PluginDeclaration {
            var d = PluginDeclaration(name: "streamer")
            d.job("streamer.bytes") { argument in
                guard let engine = context.engine else { return "no engine" }
                let size = Int(argument["size"]?.intValue ?? 0)
                let (writer, reader) = try await engine.makeByteStream()
                Task {
                    var sent = 0
                    while sent < size {
                        let n = min(65_536, size - sent)
                        try? await writer.write((sent..<(sent + n)).map { UInt8($0 % 251) })
                        sent += n
                    }
                    writer.close()
                }
                return .channel(.byteStreamReader(reader))
            }
            return d
        }
    }

    @Test("a built-in returns a byte stream too: to an in-process caller, and bridged to a subprocess plugin that calls it")
    func builtinStream() async throws {
        let engine = Engine(logger: quietLogger)
        try await engine.boot([
            PluginSpec(name: "streamer", kind: .builtin(Streamer())),
            try testPlugin("counter", "calls=streamer.bytes"),
        ])
        let result = try await engine.hub.call("streamer.bytes", .fields(("size", 300_000)))
        guard case .channel(.byteStreamReader(let reader)) = result else {
            Issue.record("not a stream: \(result)")
            return
        }
        var got: [UInt8] = []
        while let chunk = try await reader.read() { got.append(contentsOf: chunk) }
        #expect(got.count == 300_000 && got.enumerated().allSatisfy { $0.element == UInt8($0.offset % 251) })
        // A subprocess plugin calls it through the engine: the stream is bridged to its session.
        let counted = try await engine.hub.call("counter.call", .fields(("job", "streamer.bytes"), ("argument", .fields(("size", 200_000)))))
        guard case .channel(.byteStreamReader(let relayed)) = counted else {
            Issue.record("not a stream: \(counted)")
            return
        }
        var total = 0
        while let chunk = try await relayed.read() { total += chunk.count }
        #expect(total == 200_000)
        await engine.shutdown(grace: .seconds(1))
    }
}
