import Chan
import Logging
import Remote

/// Supervision of what the daemon did not start: no restarts (it cannot), the same call
/// deadlines; a connection that ends withdraws its registrations and fails its in-flight
/// calls at once, as a crash does, and calls to its jobs wait up to its start timeout for
/// it to connect again.
extension PluginSupervisor {
    /// The peer of a remote plugin's current connection.
    var remotePeer: RemotePeer? { current?.remote?.peer }

    /// Lists it away and starts waiting for its connections (boot, enable, restart).
    func beginRemote() {
        guard monitor == nil else { return }
        stopping = false
        set(.away, "waiting for it to connect")
        monitor = Task { await self.superviseRemote() }
    }

    /// One connection after another until the plugin is stopped.
    private func superviseRemote() async {
        while !stopping, !Task.isCancelled {
            do {
                _ = try await launch()
            } catch {
                if stopping || Task.isCancelled { return }
                logger.warning("remote plugin could not be taken in", metadata: ["plugin.error": "\(error)"])
                continue
            }
            guard let run = current?.remote else { continue }
            if stopping {
                await abandonRun()
                return
            }
            do {
                try activate()
            } catch {
                // Its jobs belong to another plugin, say: it hears why, and may come back.
                logger.warning("remote plugin refused: its registrations failed", metadata: ["plugin.error": "\(error)", "remote.peer": "\(run.peer)"])
                run.session.close(reason: "refused: \(error)")
                await endRun()
                current = nil
                set(.away, "its registrations were refused: \(error)")
                continue
            }
            logger.info("remote plugin connected", metadata: ["remote.peer": "\(run.peer)"])
            let end = await run.session.waitUntilClosed()
            if stopping { return }
            await endRun()
            current = nil
            activeSince = nil
            let why = "its connection from \(run.peer.address) ended (\(end.reason))"
            logger.warning("remote plugin disconnected", metadata: ["remote.peer": "\(run.peer)", "plugin.reason": "\(end.reason)"])
            // Calls wait for it as for a restarting plugin, up to its start timeout.
            withdraw(reason: why, expectBack: spec.startTimeout)
            set(.away, "\(why); calls wait up to \(spec.startTimeout.short) for it to come back")
        }
    }
}
