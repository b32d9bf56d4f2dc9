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

    private func bridge(_ value: Value, pumps: inout [@Sendable () async -> Void]) throws -> Value {
        switch value {
        case .array(let items):
            return .array(try items.map { try bridge($0, pumps: &pumps) })
        case .map(let entries):
            return .map(try entries.map { (key: try bridge($0.key, pumps: &pumps), value: try bridge($0.value, pumps: &pumps)) })
        case .channel(let end) where end.core.session !== self:
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
