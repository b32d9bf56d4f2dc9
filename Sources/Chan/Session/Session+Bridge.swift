/// Carrying channel ends across sessions.
///
/// An end can travel only on the session that made it. When the engine forwards a value
/// from one session to another (a CLI's upload stream to a plugin's job, say), each end
/// from elsewhere is replaced by a fresh end made here, and a pump task copies the traffic
/// between the two, in order, until either side ends.
extension Session {
    /// Returns `value` with every channel end from another session replaced by a local
    /// counterpart, and the pumps to start once the value has been sent.
    public func bridge(_ value: Value) throws -> (Value, [@Sendable () async -> Void]) {
        var pumps: [@Sendable () async -> Void] = []
        let bridged = try bridge(value, pumps: &pumps)
        return (bridged, pumps)
    }

    /// Whether `value` holds a channel end that cannot travel on this session as it is —
    /// one of another session, or one received from the peer (a reader the peer writes to
    /// cannot be handed back to it) — found by a walk, without allocating: most values hold
    /// none, and are sent as they are.
    public func holdsForeignEnds(_ value: Value) -> Bool {
        switch value {
        case .array(let items): return items.contains { holdsForeignEnds($0) }
        case .map(let entries): return entries.contains { holdsForeignEnds($0.key) || holdsForeignEnds($0.value) }
        case .channel(let end): return needsBridge(end)
        default: return false
        }
    }

    /// An end of another session, or one of ours that only a local pipe's end could not be.
    private func needsBridge(_ end: ChannelEnd) -> Bool {
        let core = end.core
        guard core.session === self else { return true }
        return state.withLockedValue { s in
            guard !core.released, let channel = s.channels[core.id] else { return false }
            return channel.role != .localPipe
        }
    }

    private func bridge(_ value: Value, pumps: inout [@Sendable () async -> Void]) throws -> Value {
        switch value {
        case .array(let items):
            return .array(try items.map { try bridge($0, pumps: &pumps) })
        case .map(let entries):
            return .map(try entries.map { (key: try bridge($0.key, pumps: &pumps), value: try bridge($0.value, pumps: &pumps)) })
        case .channel(let end) where needsBridge(end):
            return try bridgeEnd(end, pumps: &pumps)
        default:
            return value
        }
    }

    private func bridgeEnd(_ end: ChannelEnd, pumps: inout [@Sendable () async -> Void]) throws -> Value {
        switch end {
        case .receiver(let far):
            // Messages arrive on `far`; they must reach whoever gets `near` here.
            let (near, nearReceiver) = try makePipe()
            pumps.append { [self] in await self.pump(from: far, to: near) }
            return .channel(.receiver(nearReceiver))
        case .sender(let far):
            let (nearSender, near) = try makePipe()
            pumps.append { [self] in await self.pump(from: near, to: far) }
            return .channel(.sender(nearSender))
        case .byteStreamReader(let far):
            let (writer, reader) = try makeByteStream()
            pumps.append { [self] in await self.pump(from: far.receiver, to: writer.sender) }
            return .channel(.byteStreamReader(reader))
        case .byteStreamWriter(let far):
            let (writer, reader) = try makeByteStream()
            pumps.append { [self] in await self.pump(from: reader.receiver, to: far.sender) }
            return .channel(.byteStreamWriter(writer))
        }
    }

    /// Copies messages until the source ends (then closes the destination) or either side
    /// fails (then resets the other with the reason).
    private func pump(from source: Receiver, to destination: Sender) async {
        do {
            while let message = try await source.receive() {
                // Ends inside the message belong to the source's session.
                let (value, nested) = try destination.session.bridge(message)
                try await destination.send(value)
                for p in nested { destination.session.tasks.run(p) }
            }
            destination.close()
        } catch {
            destination.reset(reason: "\(error)")
            source.close()
        }
    }
}

extension ChannelEndCore {
    /// The session this end belongs to.
    public var owningSession: Session { session }
}
