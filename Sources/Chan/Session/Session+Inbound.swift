import NIOCore

/// Frames arriving from the transport. Runs on the transport's thread (the event loop for
/// NIO transports); never blocks.
extension Session: FrameTransportDelegate {
    func transportReceived(encoded buffer: ByteBuffer) {
        state.withLockedValue { s in
            s.stats.framesIn += 1
            s.stats.bytesIn += buffer.readableBytes + 4
        }
        let frame: Frame
        let values: Int
        do {
            let body = try buffer.withUnsafeReadableBytes { raw in
                try MsgpackUnpacker.unpack(raw, limits: limits) { [unowned self] reference in
                    try self.adoptInbound(reference)
                }
            }
            frame = try Frame(parsing: body.value)
            values = body.values
        } catch {
            malformed(error)
            return
        }
        handle(frame, size: buffer.readableBytes, values: values)
    }

    func transportReceived(frame: Frame) {
        state.withLockedValue { s in s.stats.framesIn += 1 }
        var frame = frame
        if case .data(let id, let value, let fin) = frame {
            do {
                let adopted = try Session.internalize(value) { [unowned self] reference in
                    try self.adoptInbound(reference)
                }
                frame = .data(id: id, value: adopted, fin: fin)
            } catch {
                malformed(error)
                return
            }
        }
        var size = 16
        var values = 3
        if case .data(_, let value, let fin) = frame {
            size = value.estimatedSize
            values = value.msgpackValueCount + (fin ? 4 : 3)
        }
        handle(frame, size: size, values: values)
    }

    func transportClosed(error: (any Error)?) {
        let name = state.withLockedValue { s in s.peerHello?.name ?? "(before HELLO)" }
        if let codecError = error as? CodecError {
            state.withLockedValue { s in s.stats.framesIn += 1 }
            fail(ChanError(.protocolViolation, "malformed frame from peer \(name): \(codecError)"), sendGoAway: true)
            return
        }
        let detail = error.map { "\($0)" } ?? "the transport closed"
        fail(ChanError(.peerGone, "peer \(name) is gone: \(detail)"), sendGoAway: false)
    }

    private func malformed(_ error: any Error) {
        let name = state.withLockedValue { s in s.peerHello?.name ?? "(before HELLO)" }
        fail(ChanError(.protocolViolation, "malformed frame from peer \(name): \(error)"), sendGoAway: true)
    }

    private func violation(_ reason: String) {
        let name = state.withLockedValue { s in s.peerHello?.name ?? "(before HELLO)" }
        fail(ChanError(.protocolViolation, "peer \(name): \(reason)"), sendGoAway: true)
    }

    /// Registers a channel end the peer sent us inside a message.
    func adoptInbound(_ reference: ChannelReference) throws -> Value {
        let peerWindow: Int = try state.withLockedValue { s throws -> Int in
            guard !isLocalID(reference.id) else {
                throw ChanError(.protocolViolation, "the peer referenced channel \(reference.id), an id only this side allocates")
            }
            guard s.channels[reference.id] == nil else {
                throw ChanError(.protocolViolation, "the peer reused channel id \(reference.id)")
            }
            let limit = configuration.maxEndsSentByPeer
            guard s.sentByPeer < limit else {
                throw ChanError(.protocolViolation, "too many channel ends sent by the peer and open here: limit \(limit)")
            }
            let credit = s.peerHello?.window ?? 0
            let id = reference.id
            switch reference.kind {
            case .sender: s.insertChannel(id, ChannelState(role: .sending, isByteStream: false, origin: .sentByPeer, credit: credit))
            case .receiver: s.insertChannel(id, ChannelState(role: .receiving, isByteStream: false, origin: .sentByPeer))
            case .byteStreamReader: s.insertChannel(id, ChannelState(role: .receiving, isByteStream: true, origin: .sentByPeer))
            case .byteStreamWriter: s.insertChannel(id, ChannelState(role: .sending, isByteStream: true, origin: .sentByPeer, credit: credit))
            }
            s.highestPeerID = max(s.highestPeerID, reference.id)
            return credit
        }
        _ = peerWindow
        // Ends are made outside the lock: if one were dropped inside, its deinit would take it again.
        switch reference.kind {
        case .sender: return .channel(.sender(Sender(session: self, id: reference.id)))
        case .receiver: return .channel(.receiver(Receiver(session: self, id: reference.id)))
        case .byteStreamReader: return .channel(.byteStreamReader(ByteStreamReader(receiver: Receiver(session: self, id: reference.id))))
        case .byteStreamWriter: return .channel(.byteStreamWriter(ByteStreamWriter(sender: Sender(session: self, id: reference.id))))
        }
    }

    private func handle(_ frame: Frame, size: Int, values: Int) {
        let handshaken = state.withLockedValue { s in s.peerHello != nil }
        if case .hello(let hello) = frame {
            guard !handshaken else { return violation("sent a second HELLO") }
            receivedHello(hello)
            return
        }
        guard handshaken else {
            if case .goAway(let reason) = frame {
                fail(ChanError(.peerGone, "the peer refused the session: \(reason)"), sendGoAway: false)
                return
            }
            return violation("sent \(frame.kindName) before HELLO")
        }
        switch frame {
        case .hello:
            return
        case .open(let id, let label):
            enum Admission { case accepted, refused(count: Int), notFresh }
            let limit = configuration.maxChannelsOpenedByPeer
            let admission: Admission = state.withLockedValue { s in
                guard !isLocalID(id), s.channels[id] == nil else { return .notFresh }
                // Refused or not, the id was seen: DATA the peer sent right after its OPEN is
                // then a late frame (dropped and counted), not a frame for a channel that never existed.
                s.highestPeerID = max(s.highestPeerID, id)
                guard s.openedByPeer < limit else {
                    s.stats.refusedOpens += 1
                    return .refused(count: s.stats.refusedOpens)
                }
                s.insertChannel(id, ChannelState(role: .receiving, isByteStream: false, origin: .openedByPeer))
                return .accepted
            }
            switch admission {
            case .notFresh:
                return violation("OPEN of channel \(id), which is not a fresh peer channel id")
            case .refused(let count):
                write(.reset(id: id, reason: "too many open channels: limit \(limit)"))
                // One line for the 1st, 2nd, 4th, 8th, ... refusal: a flood of OPENs is told, not logged line by line.
                if count & (count - 1) == 0 {
                    logger.warning("OPEN refused: the peer has too many channels open", metadata: [
                        "chan.channel": "\(id)", "chan.limit": "\(limit)", "chan.refused_opens": "\(count)",
                    ])
                }
                return
            case .accepted:
                break
            }
            let receiver = Receiver(session: self, id: id, label: label)
            let waiter: Waiter<Receiver?>? = state.withLockedValue { s in
                if let w = s.acceptWaiters.popFirst() { return w }
                s.acceptQueue.append(receiver)
                return nil
            }
            waiter?.continuation.resume(returning: receiver)
        case .data(let id, let value, let fin):
            receivedData(id: id, value: value, fin: fin, size: size, values: values)
        case .close(let id):
            receivedClose(id: id, reset: nil)
        case .reset(let id, let reason):
            receivedClose(id: id, reset: reason)
        case .credit(let id, let bytes):
            let waiters: [Waiter<Void>] = state.withLockedValue { s in
                guard let state = s.channels[id], state.role == .sending else { return [] }
                // Credit saturates: a peer granting 2^64-1 bytes means "unlimited", never an overflow.
                state.credit = state.credit.addingSaturating(Int(clamping: bytes))
                defer { state.creditWaiters.removeAll() }
                return Array(state.creditWaiters)
            }
            for w in waiters { w.continuation.resume() }
        case .goAway(let reason):
            let name = state.withLockedValue { s in s.peerHello?.name ?? "peer" }
            fail(ChanError(.peerGone, "peer \(name) closed the session: \(reason)"), sendGoAway: false, orderly: true)
        }
    }

    private func receivedHello(_ hello: Hello) {
        guard hello.protocolVersion == Hello.currentProtocol else {
            fail(
                ChanError(.incompatibleProtocol, "peer \(hello.name) speaks protocol \(hello.protocolVersion); this side speaks \(Hello.currentProtocol)"),
                sendGoAway: true
            )
            return
        }
        let waiter: Waiter<Hello>? = state.withLockedValue { s in
            s.peerHello = hello
            s.handshakeTimer?.cancel()
            s.handshakeTimer = nil
            // Channels opened or adopted before HELLO would have had no credit.
            defer { s.helloWaiter = nil }
            return s.helloWaiter
        }
        logger.debug("handshake complete", metadata: ["chan.peer": "\(hello.name)", "chan.max_frame": "\(hello.maxFrameSize)"])
        waiter?.continuation.resume(returning: hello)
    }

    private func receivedData(id: UInt64, value: Value, fin: Bool, size: Int, values: Int) {
        enum Outcome {
            case delivered(Waiter<Value?>, UInt64)
            case buffered
            case dropped
            case violation(String)
        }
        var endWaiters: [Waiter<Value?>] = []
        var removed: ChannelState?
        let outcome: Outcome = state.withLockedValue { s in
            guard let state = s.channels[id] else {
                let known = isLocalID(id) ? id < s.nextLocalID : id <= s.highestPeerID
                if known {
                    s.stats.droppedAfterClose += 1
                    return .dropped
                }
                return .violation("DATA on unknown channel \(id)")
            }
            guard state.role == .receiving else {
                return .violation("DATA on channel \(id), whose sender is not held by the peer")
            }
            if state.finished { return .violation("DATA on channel \(id) after its end") }
            if state.failure != nil {
                s.stats.droppedAfterClose += 1
                return .dropped
            }
            var result = Outcome.buffered
            if state.inbox.isEmpty, let waiter = state.receiveWaiters.popFirst() {
                result = .delivered(waiter, consumedLocked(state, size: size))
            } else {
                state.inbox.append((value: value, size: size, values: values))
                state.inboxBytes += size
                state.inboxValues += values
                let limit = configuration.window + configuration.maxFrameSize
                if state.inboxBytes + state.uncredited > limit {
                    return .violation("overran the flow-control window on channel \(id) (\(state.inboxBytes + state.uncredited) bytes outstanding, window \(configuration.window))")
                }
                // What the unread messages cost decoded: a sender within its credit has sent
                // at most `window` bytes (each value is at least one byte) before its last
                // frame, and that frame holds at most `maxValues` values.
                let valueLimit = configuration.window.addingSaturating(limits.maxValues)
                if state.inboxValues > valueLimit {
                    return .violation("overran the flow-control window on channel \(id) (\(state.inboxValues) msgpack values unread, limit window + max values = \(valueLimit))")
                }
            }
            if fin {
                state.finished = true
                if state.inbox.isEmpty {
                    endWaiters = Array(state.receiveWaiters)
                    state.receiveWaiters.removeAll()
                    removed = s.removeChannel(id)
                }
            }
            return result
        }
        _ = removed
        switch outcome {
        case .delivered(let waiter, let credit):
            if credit > 0 { write(.credit(id: id, bytes: credit)) }
            waiter.continuation.resume(returning: value)
        case .buffered:
            break
        case .dropped:
            logger.debug("message for a closed channel dropped", metadata: ["chan.channel": "\(id)"])
        case .violation(let reason):
            violation(reason)
        }
        for w in endWaiters { w.continuation.resume(returning: nil) }
    }

    private func receivedClose(id: UInt64, reset: String?) {
        var receiveWaiters: [Waiter<Value?>] = []
        var creditWaiters: [Waiter<Void>] = []
        var dropped: [(value: Value, size: Int, values: Int)] = []
        var removed: ChannelState?
        let error: ChanError? = state.withLockedValue { s in
            guard let state = s.channels[id] else { return nil }
            switch state.role {
            case .receiving:
                if let reset {
                    let e = ChanError(.channelReset, "the sender of channel \(id) aborted it: \(reset)")
                    state.failure = e
                    dropped = Array(state.inbox)
                    state.inbox.removeAll()
                    state.inboxBytes = 0
                    state.inboxValues = 0
                    receiveWaiters = Array(state.receiveWaiters)
                    state.receiveWaiters.removeAll()
                    return e
                }
                state.finished = true
                if state.inbox.isEmpty {
                    receiveWaiters = Array(state.receiveWaiters)
                    state.receiveWaiters.removeAll()
                    removed = s.removeChannel(id)
                }
                return nil
            case .sending:
                let e = reset.map { ChanError(.channelReset, "the receiver of channel \(id) aborted it: \($0)") }
                    ?? ChanError(.channelClosed, "the receiver of channel \(id) closed it")
                state.failure = e
                creditWaiters = Array(state.creditWaiters)
                state.creditWaiters.removeAll()
                return e
            case .localPipe:
                return nil
            }
        }
        _ = removed
        _ = dropped
        for w in receiveWaiters {
            if let error { w.continuation.resume(throwing: error) } else { w.continuation.resume(returning: nil) }
        }
        for w in creditWaiters {
            w.continuation.resume(throwing: error ?? ChanError(.channelClosed, "channel \(id) closed"))
        }
    }
}
