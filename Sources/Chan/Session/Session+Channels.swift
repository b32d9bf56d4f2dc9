import NIOCore

/// Sending, receiving and closing channel ends. Values that may hold channel ends are
/// always dropped outside the lock, because dropping an end takes the lock (its deinit
/// closes the channel).
extension Session {
    func send(_ value: Value, on sender: Sender, fin: Bool) async throws {
        let id = sender.id
        // Take the channel's turn: credit left, and no other send between its credit check and
        // its charge. Without the turn, concurrent sends on one channel (a plugin's many calls
        // on its one engine channel) all passed the check before any was charged, and
        // overshot the window by many frames: the receiver cut the session off as an overrun.
        while true {
            let ready = try state.withLockedValue { s throws -> Bool in
                let state = try sendableStateLocked(s, sender)
                guard state.credit > 0, !state.sending else { return false }
                state.sending = true
                return true
            }
            if ready { break }
            try await waitForCredit(sender)
        }
        let size: Int
        do {
            size = try writeThrowing(.data(id: id, value: value, fin: fin)) { [unowned self] end in
                try self.resolveOutbound(end)
            }
        } catch {
            let next: Waiter<Void>? = state.withLockedValue { s in
                guard let state = s.channels[id] else { return nil }
                state.sending = false
                return state.credit > 0 ? state.creditWaiters.popFirst() : nil
            }
            next?.continuation.resume()
            throw error
        }
        var wake: [Waiter<Void>] = []
        let dropped: ChannelState? = state.withLockedValue { s in
            guard let state = s.channels[id] else { return nil }
            state.credit -= size
            state.sending = false
            if fin {
                sender.released = true
                // Sends still waiting find the end released.
                wake = Array(state.creditWaiters)
                state.creditWaiters.removeAll()
                return s.removeChannel(id)
            }
            // The turn passes to the next waiting send while credit is left; once it is not,
            // the next CREDIT wakes them all.
            if state.credit > 0, let next = state.creditWaiters.popFirst() { wake = [next] }
            return nil
        }
        _ = dropped
        for w in wake { w.continuation.resume() }
    }

    /// Why a send on `sender` would fail now, or nil when it would go ahead.
    func sendFailure(_ sender: Sender) -> ChanError? {
        state.withLockedValue { s in
            do throws(ChanError) {
                _ = try sendableStateLocked(s, sender)
                return nil
            } catch {
                return error
            }
        }
    }

    private func sendableStateLocked(_ s: State, _ sender: Sender) throws(ChanError) -> ChannelState {
        if sender.released {
            throw ChanError(.endMoved, "Sender \(sender.id) was already sent to the peer, finished or closed")
        }
        if let failure = s.failure { throw failure }
        guard let state = s.channels[sender.id] else {
            throw ChanError(.channelClosed, "the receiver of channel \(sender.id) closed it")
        }
        if let failure = state.failure { throw failure }
        switch state.role {
        case .localPipe:
            throw ChanError(.notConnected, "channel \(sender.id) is a pipe whose ends are both here: send one end to the peer first")
        case .receiving:
            throw ChanError(.endMoved, "the Sender of channel \(sender.id) was sent to the peer")
        case .sending:
            return state
        }
    }

    private func waitForCredit(_ sender: Sender) async throws {
        let waiterID = state.withLockedValue { s -> UInt64 in
            defer { s.nextWaiterID += 1 }
            return s.nextWaiterID
        }
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                var observer: (@Sendable (UInt64) -> Void)?
                let immediate: Result<Void, ChanError>? = state.withLockedValue { s -> Result<Void, ChanError>? in
                    do throws(ChanError) {
                        let state = try sendableStateLocked(s, sender)
                        if state.credit > 0 && !state.sending { return .success(()) }
                        state.creditWaiters.append(Waiter(id: waiterID, continuation: continuation))
                        // A stall is a wait for credit, not for another send's turn.
                        if state.credit <= 0 { observer = s.creditStallObserver }
                        return nil
                    } catch {
                        return .failure(error)
                    }
                }
                if let immediate { continuation.resume(with: immediate) }
                observer?(sender.id)
            }
        } onCancel: {
            let waiter: Waiter<Void>? = state.withLockedValue { s in
                guard let state = s.channels[sender.id],
                      let i = state.creditWaiters.firstIndex(where: { $0.id == waiterID }) else { return nil }
                return state.creditWaiters.remove(at: i)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Called while encoding a message that carries `end`: checks that the end may leave,
    /// and records that it left.
    func resolveOutbound(_ end: ChannelEnd) throws -> ChannelReference {
        let core = end.core
        guard core.session === self else {
            throw ChanError(.wrongSession, "\(end) belongs to session \(core.session.configuration.name), not \(configuration.name)")
        }
        try state.withLockedValue { s throws in
            if core.released { throw ChanError(.endMoved, "\(end) was already sent or closed") }
            guard let state = s.channels[core.id] else {
                throw ChanError(.channelClosed, "\(end): its channel is closed")
            }
            guard state.role == .localPipe else {
                throw ChanError(.endMoved, "\(end) cannot be sent: only an end of a pipe made here, whose other end is still here, can travel")
            }
            switch end.referenceKind {
            case .sender, .byteStreamWriter:
                guard state.receiverAlive else {
                    throw ChanError(.channelClosed, "\(end) cannot be sent: its Receiver was already dropped")
                }
                state.role = .receiving
            case .receiver, .byteStreamReader:
                guard state.senderAlive else {
                    throw ChanError(.channelClosed, "\(end) cannot be sent: its Sender was already dropped")
                }
                guard state.inbox.isEmpty, state.receiveWaiters.isEmpty else {
                    throw ChanError(.endMoved, "\(end) cannot be sent while it is being read here")
                }
                state.role = .sending
                state.credit = s.peerHello?.window ?? 0
            }
            core.released = true
        }
        return ChannelReference(kind: end.referenceKind, id: core.id)
    }

    func receive(on receiver: Receiver, timeout: Duration?) async throws -> Value? {
        let id = receiver.id
        // Fast path: a message is already buffered.
        var creditToSend: UInt64 = 0
        let (step, removed) = try state.withLockedValue { s throws -> (ReceiveStep, ChannelState?) in
            try takeLocked(&s, receiver, creditToSend: &creditToSend)
        }
        _ = removed
        if creditToSend > 0 { write(.credit(id: id, bytes: creditToSend)) }
        switch step {
        case .value(let v): return v
        case .end: return nil
        case .wait: break
        }

        let waiterID = state.withLockedValue { s -> UInt64 in
            defer { s.nextWaiterID += 1 }
            return s.nextWaiterID
        }
        let deadline = timeout.map { timeout in
            deadlines.schedule(in: timeout) { [weak self] in
                self?.failWaiter(channel: id, waiterID: waiterID, ChanError(.timeout, "no message on channel \(id) within \(timeout.short)"))
            }
        }
        defer { if let deadline { deadlines.cancel(deadline) } }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Value?, any Error>) in
                var credit: UInt64 = 0
                let immediate: Result<Value?, ChanError>?
                let removed: ChannelState?
                do {
                    (immediate, removed) = try state.withLockedValue { s throws -> (Result<Value?, ChanError>?, ChannelState?) in
                        let (step, removed) = try takeLocked(&s, receiver, creditToSend: &credit)
                        switch step {
                        case .value(let v): return (.success(v), removed)
                        case .end: return (.success(nil), removed)
                        case .wait:
                            // takeLocked returned .wait, so the state exists.
                            s.channels[id]?.receiveWaiters.append(Waiter(id: waiterID, continuation: continuation))
                            return (nil, nil)
                        }
                    }
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                _ = removed
                if credit > 0 { write(.credit(id: id, bytes: credit)) }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            failWaiter(channel: id, waiterID: waiterID, CancellationError())
        }
    }

    private func takeLocked(_ s: inout State, _ receiver: Receiver, creditToSend: inout UInt64) throws -> (step: ReceiveStep, removed: ChannelState?) {
        if receiver.released {
            throw ChanError(.endMoved, "Receiver \(receiver.id) was sent to the peer or closed")
        }
        guard let state = s.channels[receiver.id] else {
            if let failure = s.failure { throw failure }
            return (.end, nil)
        }
        if let (value, size, values) = state.inbox.popFirst() {
            state.inboxBytes -= size
            state.inboxValues -= values
            creditToSend = consumedLocked(state, size: size)
            if state.finished && state.inbox.isEmpty {
                return (.value(value), s.removeChannel(receiver.id))
            }
            return (.value(value), nil)
        }
        if let failure = state.failure { throw failure }
        if state.finished {
            return (.end, s.removeChannel(receiver.id))
        }
        return (.wait, nil)
    }

    /// Accounts for `size` consumed bytes; returns credit to grant the peer, or 0.
    func consumedLocked(_ state: ChannelState, size: Int) -> UInt64 {
        guard state.role == .receiving, !state.finished else { return 0 }
        state.uncredited += size
        if state.uncredited >= configuration.window / 2 {
            defer { state.uncredited = 0 }
            return UInt64(state.uncredited)
        }
        return 0
    }

    func failWaiter(channel id: UInt64, waiterID: UInt64, _ error: any Error) {
        let waiter: Waiter<Value?>? = state.withLockedValue { s in
            guard let state = s.channels[id], let i = state.receiveWaiters.firstIndex(where: { $0.id == waiterID }) else { return nil }
            return state.receiveWaiters.remove(at: i)
        }
        waiter?.continuation.resume(throwing: error)
    }

    /// Explicit close (or reset, with a reason) of an end held here.
    func closeEnd(_ core: ChannelEndCore, reason: String?) {
        release(core, reason: reason, explicit: true)
    }

    /// The last reference to an end went away.
    func endDropped(_ core: ChannelEndCore) {
        release(core, reason: nil, explicit: false)
    }

    private func release(_ core: ChannelEndCore, reason: String?, explicit: Bool) {
        let isSender = core is Sender
        var frame: Frame?
        var waiters: [Waiter<Value?>] = []
        var creditWaiters: [Waiter<Void>] = []
        let removed: ChannelState? = state.withLockedValue { s in
            guard !core.released else { return nil }
            core.released = true
            guard let state = s.channels[core.id] else { return nil }
            switch state.role {
            case .localPipe:
                if isSender { state.senderAlive = false } else { state.receiverAlive = false }
                if isSender && state.receiverAlive {
                    // The local receiver sees the end of a pipe nobody can write to any more.
                    state.finished = true
                    waiters = Array(state.receiveWaiters)
                    state.receiveWaiters.removeAll()
                }
                if !state.senderAlive && !state.receiverAlive {
                    return s.removeChannel(core.id)
                }
                return nil
            case .sending:
                guard isSender else { return nil }
                if s.failure == nil && state.failure == nil {
                    frame = reason.map { .reset(id: core.id, reason: $0) } ?? .close(id: core.id)
                }
                // Sends still waiting for credit find the end closed.
                creditWaiters = Array(state.creditWaiters)
                state.creditWaiters.removeAll()
                return s.removeChannel(core.id)
            case .receiving:
                guard !isSender else { return nil }
                if s.failure == nil && !state.finished && state.failure == nil {
                    frame = .close(id: core.id)
                }
                if !state.inbox.isEmpty {
                    s.stats.droppedAfterClose += state.inbox.count
                }
                waiters = Array(state.receiveWaiters)
                state.receiveWaiters.removeAll()
                return s.removeChannel(core.id)
            }
        }
        if let removed, !removed.inbox.isEmpty {
            logger.debug("receiver closed with unread messages", metadata: [
                "chan.channel": "\(core.id)", "chan.unread": "\(removed.inbox.count)", "chan.explicit": "\(explicit)",
            ])
        }
        if let frame { write(frame) }
        for w in creditWaiters { w.continuation.resume() }
        for w in waiters {
            if isSender { w.continuation.resume(returning: nil) } else {
                w.continuation.resume(throwing: ChanError(.endMoved, "Receiver \(core.id) was closed while being read"))
            }
        }
    }
}

enum ReceiveStep {
    case value(Value)
    case end
    case wait
}
