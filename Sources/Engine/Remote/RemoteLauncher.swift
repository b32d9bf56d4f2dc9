import Chan
import Remote
import Routing

/// A remote plugin's current connection.
struct RemoteRun: Sendable {
    let session: Session
    let peer: RemotePeer
    let since: ContinuousClock.Instant
}

/// "Launches" a remote plugin: waits for it to connect (the listener checked who it is and
/// took its HELLO), then opens its calls channel, as for a plugin on fds 3/4.
struct RemoteLauncher: PluginLauncher {
    let engine: EngineParts

    func launch(_ request: LaunchRequest) async throws -> LaunchedPlugin {
        let arrival = try await engine.remoteArrivals.next(for: request.name)
        var description = arrival.description
        description.name = request.name
        let session = arrival.session
        let peer = arrival.peer
        let calls: Sender
        do {
            calls = try session.open(label: "calls")
        } catch {
            session.close(reason: "cannot open its calls channel")
            throw EngineError(.startFailed, "plugin \(request.name): cannot open its calls channel: \(error)")
        }
        let participant = Participant.remote(request.name, calls: calls) {
            let why = session.closeReason?.reason ?? "closed"
            return "its connection from \(peer.address) ended (\(why))"
        }
        return LaunchedPlugin(
            description: description, participant: participant, process: nil, onStop: nil,
            remote: RemoteRun(session: session, peer: peer, since: .now)
        )
    }
}
