#if canImport(Glibc)
import Glibc
#endif
import Chan
import Foundation
import Spawn
import Testing
import TestSupport

/// A plugin's own error code reaches its callers unchanged, over the admin socket and
/// from plugin to plugin, with one spelling for the daemon's own codes.
@Suite("error codes travel end to end", .serialized)
struct ErrorCodeTests {
    let place = DaemonPlace("codes")

    @Test("a custom code reaches an admin caller and a calling plugin unchanged; the daemon's own codes are spelled with dashes")
    func customCode() async throws {
        let plugin = try builtExecutable("plugboard-test-plugin")
        let daemon = try await place.startDaemon([
            "--plugin-exec", "vol=\(plugin)",
            "--plugin-exec", "asker=\(plugin) calls=vol.fail,nope.job",
        ])
        try await whileRunning(daemon) {
            // The admin socket, spoken directly: the code as sent.
            let session = try await Session.connect(unixSocketPath: place.socket, configuration: .init(name: "codes"), logger: quietLogger)
            try await session.start()
            let admin = try session.open(label: "admin")
            let body: Value = .fields(("command", "call"), ("job", "vol.fail"), ("argument", .fields(("code", "volume.not-found"), ("message", "no volume named x"))))
            await #expect {
                try await admin.request(body, timeout: .seconds(10))
            } throws: { error in
                let e = error as? ChanError
                return e?.remoteCode == "volume.not-found" && e?.reason == "no volume named x"
            }
            await #expect {
                try await admin.request(.fields(("command", "call"), ("job", "nope.job")), timeout: .seconds(10))
            } throws: { ($0 as? ChanError)?.remoteCode == "routing.unknown-job" }
            session.close(reason: "done")

            // The CLI shows the code beside the message.
            let cli = try await place.cli(["call", "vol.fail", #"{"code": "volume.not-found", "message": "no volume named x"}"#])
            #expect(cli.status != .exited(0) && cli.err.contains("no volume named x [volume.not-found]"), "\(cli.err)")

            // A plugin calling through the engine sees the same code.
            let probed = try await place.cli(["call", "asker.probe", #"{"job": "vol.fail", "argument": {"code": "volume.not-found", "message": "gone"}}"#])
            #expect(probed.out.contains(#""code" : "volume.not-found""#), "\(probed.out) \(probed.err)")
            let unknown = try await place.cli(["call", "asker.probe", #"{"job": "nope.job"}"#])
            #expect(unknown.out.contains(#""code" : "routing.unknown-job""#), "\(unknown.out)")
            // And a plugin that lets the failure pass on passes the code on: admin → asker → vol.
            let chained = try await place.cli(["call", "asker.call", #"{"job": "vol.fail", "argument": {"code": "volume.busy", "message": "in use"}}"#])
            #expect(chained.err.contains("[volume.busy]"), "\(chained.err)")
        }
        await place.stop(daemon)
    }
}
