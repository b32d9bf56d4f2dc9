import Chan
import Logging
import Remote
import Routing

extension Engine {
    /// The largest frame a plugin may send (its listener's frame decoder takes this).
    public static let maxFrameFromPlugins = maxFrameFromPlugin

    /// Takes in the remote plugins that connect through `listener` until it closes or the
    /// task is cancelled: each says HELLO (its name is the name it claims), is checked
    /// against that plugin's allow-list, and is handed to its supervisor, which registers it
    /// as any plugin. A refused one is told why (GOAWAY) and logged.
    public func servePlugins(on listener: RemoteListener) async {
        await withDiscardingTaskGroup { group in
            for await connection in listener.connections {
                group.addTask { await self.admit(connection) }
            }
        }
    }

    /// HELLO, the checks, and the hand-over to the plugin's supervisor.
    func admit(_ connection: RemoteConnection) async {
        var logger = self.logger
        logger[metadataKey: "remote.peer"] = "\(connection.peer)"
        let session = connection.session(
            configuration: .init(name: "plugboardd", maxFrameSize: maxFrameFromPlugin, maxChannelsOpenedByPeer: ResourceLimits.defaultChannels, handshakeTimeout: .seconds(10)),
            logger: logger
        )
        let hello: Hello
        do {
            hello = try await session.start()
        } catch {
            logger.warning("remote connection ended before its HELLO", metadata: ["remote.error": "\(error)"])
            session.close(reason: "no HELLO")
            return
        }
        let claimed = hello.name
        func refuse(_ why: String) {
            logger.warning("remote plugin refused", metadata: ["plugin.name": "\(claimed)", "remote.reason": "\(why)"])
            bus.publish("remote.refused", [("plugin", .string(claimed)), ("peer", .string(connection.peer.description)), ("reason", .string(why))])
            session.close(reason: "refused: \(why)")
        }
        guard let supervisor = supervisorList.first(where: { $0.name == claimed })?.supervisor else {
            refuse("no remote plugin named \(claimed) is configured on this daemon")
            return
        }
        let spec = await supervisor.spec
        guard case .remote(let access) = spec.kind else {
            refuse("plugin \(claimed) is a \(spec.kindName) plugin here, not a remote one")
            return
        }
        if let why = access.refusal(of: connection.peer, as: claimed) {
            refuse(why)
            return
        }
        let state = await supervisor.state
        if let peer = await supervisor.remotePeer {
            refuse("plugin \(claimed) is already connected from \(peer.address)")
            return
        }
        guard state == .away || state == .starting else {
            refuse("plugin \(claimed) is \(state.rawValue) on this daemon")
            return
        }
        let description: PluginDescription
        do {
            description = try PluginDescription(wire: hello.meta, fallbackName: claimed)
        } catch {
            refuse("its declaration is malformed: \(error)")
            return
        }
        // The HELLO's name is the one it claims (and was checked); its declaration's name
        // gives way, as a declared name gives way to NAME= on the command line.
        parts.remoteArrivals.offer(RemoteArrival(session: session, description: description, peer: connection.peer), to: claimed)
    }
}
