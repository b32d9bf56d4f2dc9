import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A libchan-style session: many uni-directional channels multiplexed over one duplex
/// transport (an fd pair, a unix socket, or an in-memory pair).
///
/// Lifecycle: make one with a transport constructor (``overFileDescriptors(read:write:role:configuration:logger:)``,
/// ``connect(unixSocketPath:role:configuration:logger:)``, ``inMemoryPair(_:_:logger:)``), call
/// ``start()`` to exchange HELLO frames, then ``open(label:)`` channels, ``accept()`` the
/// peer's, or send channel ends inside messages (``makePipe()``). When the peer dies or
/// the transport closes, every pending receive, credit wait and accept ends at once with
/// ``ChanError/Code/peerGone``.
///
/// Thread safety: all mutable state is one ``State`` value in a `NIOLockedValueBox`, never
/// held while calling out. The class stays `@unchecked Sendable` because the box holds
/// `ChannelState` objects (mutable classes, reached only through the box) and waiters'
/// continuations, which the compiler cannot prove confined to the lock.
public final class Session: @unchecked Sendable {
    /// Which side made the transport; it decides the parity of channel ids.
    public enum Role: Sendable {
        /// Allocates odd channel ids (the engine side).
        case initiator
        /// Allocates even channel ids (the plugin side).
        case acceptor
    }

    /// Tunables announced in HELLO.
    public struct Configuration: Sendable {
        /// Our name, sent in HELLO.
        public var name: String
        /// The largest frame body we accept (default 16 MiB).
        public var maxFrameSize: Int
        /// Bytes we buffer per channel before the peer must wait for credit (default 256 KiB).
        public var window: Int
        /// Deepest nesting of arrays and maps we accept.
        public var maxDepth: Int
        /// The most msgpack values one frame may hold, at any depth (default 262,144): what
        /// a frame may cost once decoded. A frame from the peer over it is a protocol
        /// violation; a frame of ours over it is refused locally, before it is written.
        public var maxValues: Int
        /// The most channels the peer may have opened with OPEN and still open here (default
        /// 1024). Past it, an OPEN is refused with a RESET whose reason is
        /// `too many open channels: limit N`; the session and its other channels go on.
        public var maxChannelsOpenedByPeer: Int
        /// The most channel ends the peer may have sent inside messages and still open here
        /// (reply channels, byte streams; default 65,536). Past it the session ends as a
        /// protocol violation: a message cannot be delivered with a hole where an end was.
        public var maxEndsSentByPeer: Int
        /// How long ``Session/start()`` waits for the peer's HELLO.
        public var handshakeTimeout: Duration
        /// Free-form metadata sent in HELLO.
        public var meta: Value

        /// The default of ``maxChannelsOpenedByPeer``: 1024 (docs/PROTOCOL.md, Limits).
        public static let defaultMaxChannelsOpenedByPeer = 1024
        /// The default of ``maxEndsSentByPeer``: 65,536 (docs/PROTOCOL.md, Limits).
        public static let defaultMaxEndsSentByPeer = 65_536

        /// Makes a configuration; only the name is required (defaults: 16 MiB frames, a 256 KiB
        /// window, depth 32, 262,144 values per frame, 1024 channels opened by the peer,
        /// 65,536 channel ends sent by the peer, a 10-second handshake, empty metadata).
        public init(
            name: String,
            maxFrameSize: Int = DecodingLimits.defaultMaxFrameSize,
            window: Int = 256 * 1024,
            maxDepth: Int = DecodingLimits.msgpackCStackLimit,
            maxValues: Int = DecodingLimits.defaultMaxValues,
            maxChannelsOpenedByPeer: Int = Configuration.defaultMaxChannelsOpenedByPeer,
            maxEndsSentByPeer: Int = Configuration.defaultMaxEndsSentByPeer,
            handshakeTimeout: Duration = .seconds(10),
            meta: Value = .map([])
        ) {
            self.name = name
            self.maxFrameSize = maxFrameSize
            self.window = window
            self.maxDepth = maxDepth
            self.maxValues = maxValues
            self.maxChannelsOpenedByPeer = maxChannelsOpenedByPeer
            self.maxEndsSentByPeer = maxEndsSentByPeer
            self.handshakeTimeout = handshakeTimeout
            self.meta = meta
        }
    }

    /// Our configuration.
    public let configuration: Configuration
    /// Our role.
    public let role: Role
    let transport: any FrameTransport
    let logger: Logger
    let limits: DecodingLimits

    /// Everything about the session that changes, behind one lock (never held while calling out).
    struct State {
        var channels: [UInt64: ChannelState] = [:]
        /// Channels in `channels` that the peer opened with OPEN.
        var openedByPeer = 0
        /// Channels in `channels` whose end the peer sent inside a message.
        var sentByPeer = 0
        var nextLocalID: UInt64
        var highestPeerID: UInt64 = 0
        var nextWaiterID: UInt64 = 1
        var acceptQueue = CircularBuffer<Receiver>()
        var acceptWaiters = CircularBuffer<Waiter<Receiver?>>()
        var helloWaiter: Waiter<Hello>?
        /// The handshake deadline, cancelled once the HELLO arrives or the session ends (found
        /// by fuzzing: left alone, each session's timer and its closure lived on for the whole
        /// timeout after the handshake).
        var handshakeTimer: Scheduled<Void>?
        var peerHello: Hello?
        var failure: ChanError?
        /// The session ended by a local close or the peer's GOAWAY, not by a crash.
        var orderlyClose = false
        var stats = SessionStats()
        var closedWaiters: [UnsafeContinuation<ChanError, Never>] = []
        /// Called (outside the lock) with the channel id whenever a sender parks for credit.
        var creditStallObserver: (@Sendable (UInt64) -> Void)?

        /// Throws why the session cannot be used now: it ended, or the handshake has not finished.
        func checkOpen() throws(ChanError) {
            if let failure { throw failure }
            guard peerHello != nil else {
                throw ChanError(.notStarted, "call start() and let the handshake finish before using the session")
            }
        }

        /// The next channel id of our parity.
        mutating func allocateID() -> UInt64 {
            defer { nextLocalID += 2 }
            return nextLocalID
        }

        /// Registers channel `id`, counting it against the peer's limits by its origin.
        mutating func insertChannel(_ id: UInt64, _ channel: ChannelState) {
            switch channel.origin {
            case .local: break
            case .openedByPeer: openedByPeer += 1
            case .sentByPeer: sentByPeer += 1
            }
            channels[id] = channel
        }

        /// Forgets channel `id`, and un-counts it; every channel leaves `channels` here.
        mutating func removeChannel(_ id: UInt64) -> ChannelState? {
            guard let channel = channels.removeValue(forKey: id) else { return nil }
            switch channel.origin {
            case .local: break
            case .openedByPeer: openedByPeer -= 1
            case .sentByPeer: sentByPeer -= 1
            }
            return channel
        }
    }

    /// The session's mutable state; the box is the only way to reach it.
    let state: NIOLockedValueBox<State>

    /// Called (outside the lock) with the channel id whenever a sender parks for credit;
    /// tests watch flow control with it.
    var creditStallObserver: (@Sendable (UInt64) -> Void)? {
        get { state.withLockedValue { $0.creditStallObserver } }
        set { state.withLockedValue { $0.creditStallObserver = newValue } }
    }
    /// Tasks this session owns (pumps between bridged channels); cancelled when it ends.
    public let tasks = TaskSet()
    // Only the transport's inbound path touches the unpacker side; the packer has its own lock.
    let packerLock = NIOLock()
    let packer = MsgpackPacker()
    let executorOnLoop: EventLoopTaskExecutor
    /// Receive deadlines: one sweep serves them all, because a timer per call (NIO's heap
    /// insert and cancel) cost a quarter of a call's CPU.
    let deadlines: DeadlineSweeper

    init(transport: any FrameTransport, role: Role, configuration: Configuration, logger: Logger) {
        self.transport = transport
        self.role = role
        self.configuration = configuration
        self.limits = DecodingLimits(maxDepth: configuration.maxDepth, maxFrameSize: configuration.maxFrameSize, maxValues: configuration.maxValues)
        var logger = logger
        logger[metadataKey: "chan.session"] = "\(configuration.name)"
        self.logger = logger
        self.state = NIOLockedValueBox(State(nextLocalID: role == .initiator ? 1 : 2))
        self.executorOnLoop = EventLoopTaskExecutor(eventLoop: transport.eventLoop)
        self.deadlines = DeadlineSweeper(eventLoop: transport.eventLoop)
    }

    /// The peer's HELLO, once ``start()`` returned.
    public var peer: Hello? { state.withLockedValue { s in s.peerHello } }

    /// Traffic counters.
    public var statistics: SessionStats {
        state.withLockedValue { s in
            var stats = s.stats
            stats.openChannels = s.channels.count
            stats.channelsOpenedByPeer = s.openedByPeer
            stats.endsSentByPeer = s.sentByPeer
            stats.bufferedBytes = s.channels.values.reduce(0) { $0 + $1.inboxBytes }
            return stats
        }
    }

    /// Why the session ended, or nil while it is open.
    public var closeReason: ChanError? { state.withLockedValue { s in s.failure } }

    /// Sends our HELLO and waits for the peer's. Throws
    /// ``ChanError/Code/incompatibleProtocol`` when versions differ (the peer is told why)
    /// and ``ChanError/Code/timeout`` if no HELLO arrives in time.
    @discardableResult
    public func start() async throws -> Hello {
        let hello = Hello(name: configuration.name, maxFrameSize: configuration.maxFrameSize, window: configuration.window, meta: configuration.meta)
        let waiterID = state.withLockedValue { s -> UInt64 in
            defer { s.nextWaiterID += 1 }
            return s.nextWaiterID
        }
        transport.start(self)
        write(.hello(hello))
        armHandshakeTimer()
        let peer: Hello = try await withUnsafeThrowingContinuation { continuation in
            let immediate: Result<Hello, ChanError>? = state.withLockedValue { s in
                if let peerHello = s.peerHello { return .success(peerHello) }
                if let failure = s.failure { return .failure(failure) }
                s.helloWaiter = Waiter(id: waiterID, continuation: continuation)
                return nil
            }
            if let immediate { continuation.resume(with: immediate) }
        } as Hello
        return peer
    }

    func armHandshakeTimer() {
        let timeout = configuration.handshakeTimeout
        let timer = transport.eventLoop.scheduleTask(in: timeout.timeAmount) { [weak self] in
            guard let self else { return }
            // fail() wakes the waiter in start(), whether it is parked yet or not.
            let stillWaiting = self.state.withLockedValue { s in s.peerHello == nil && s.failure == nil }
            if stillWaiting {
                self.fail(ChanError(.timeout, "no HELLO from the peer within \(timeout.short)"), sendGoAway: true)
            }
        }
        // The HELLO may already be here (or the session over): then the timer goes at once.
        let needed = state.withLockedValue { s in
            guard s.peerHello == nil && s.failure == nil else { return false }
            s.handshakeTimer = timer
            return true
        }
        if !needed { timer.cancel() }
    }

    /// Opens a top-level channel: the peer gets its receiver from ``accept()``.
    public func open(label: String = "") throws -> Sender {
        let sender: Sender = try state.withLockedValue { s in
            try s.checkOpen()
            let id = s.allocateID()
            s.insertChannel(id, ChannelState(role: .sending, isByteStream: false, origin: .local, credit: s.peerHello?.window ?? 0))
            return Sender(session: self, id: id)
        }
        write(.open(id: sender.id, label: label))
        return sender
    }

    /// The next channel the peer opened, or `nil` once the session closed cleanly.
    public func accept() async throws -> Receiver? {
        let waiterID = state.withLockedValue { s -> UInt64 in
            defer { s.nextWaiterID += 1 }
            return s.nextWaiterID
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Receiver?, any Error>) in
                let immediate: Result<Receiver?, any Error>? = state.withLockedValue { s in
                    if let next = s.acceptQueue.popFirst() { return .success(next) }
                    if let failure = s.failure { return s.orderlyClose ? .success(nil) : .failure(failure) }
                    s.acceptWaiters.append(Waiter(id: waiterID, continuation: continuation))
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter: Waiter<Receiver?>? = state.withLockedValue { s in
                guard let i = s.acceptWaiters.firstIndex(where: { $0.id == waiterID }) else { return nil }
                return s.acceptWaiters.remove(at: i)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Makes a channel whose two ends are both here; send one of them to the peer inside a
    /// message (a request's reply channel is made this way).
    public func makePipe() throws -> (Sender, Receiver) {
        try state.withLockedValue { s in
            try s.checkOpen()
            let id = s.allocateID()
            s.insertChannel(id, ChannelState(role: .localPipe, isByteStream: false, origin: .local))
            return (Sender(session: self, id: id), Receiver(session: self, id: id))
        }
    }

    /// Makes a byte stream whose two ends are both here; send one of them to the peer.
    public func makeByteStream() throws -> (ByteStreamWriter, ByteStreamReader) {
        try state.withLockedValue { s in
            try s.checkOpen()
            let id = s.allocateID()
            s.insertChannel(id, ChannelState(role: .localPipe, isByteStream: true, origin: .local))
            return (ByteStreamWriter(sender: Sender(session: self, id: id)), ByteStreamReader(receiver: Receiver(session: self, id: id)))
        }
    }

    /// Ends the session: tells the peer why (GOAWAY) and fails everything pending with
    /// ``ChanError/Code/peerGone``.
    public func close(reason: String = "session closed") {
        fail(ChanError(.peerGone, "closed locally: \(reason)"), sendGoAway: true, orderly: true)
    }

    /// Waits until the session has ended and returns why.
    public func waitUntilClosed() async -> ChanError {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<ChanError, Never>) in
            let done: ChanError? = state.withLockedValue { s in
                if let failure = s.failure { return failure }
                s.closedWaiters.append(continuation)
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    // MARK: - Internals shared by the other files

    func isLocalID(_ id: UInt64) -> Bool {
        (id % 2 == 1) == (role == .initiator)
    }

    /// Ends the session with `error`, waking every waiter.
    func fail(_ error: ChanError, sendGoAway: Bool, orderly: Bool = false) {
        var receiveWaiters: [Waiter<Value?>] = []
        var creditWaiters: [Waiter<Void>] = []
        let (acceptWaiters, helloWaiter, closedWaiters, wasOpen): ([Waiter<Receiver?>], Waiter<Hello>?, [UnsafeContinuation<ChanError, Never>], Bool) = state.withLockedValue { s in
            guard s.failure == nil else { return ([], nil, [], false) }
            s.failure = error
            s.handshakeTimer?.cancel()
            s.handshakeTimer = nil
            s.orderlyClose = orderly
            for state in s.channels.values {
                if state.failure == nil { state.failure = error }
                receiveWaiters.append(contentsOf: state.receiveWaiters)
                state.receiveWaiters.removeAll()
                creditWaiters.append(contentsOf: state.creditWaiters)
                state.creditWaiters.removeAll()
            }
            let a = Array(s.acceptWaiters)
            s.acceptWaiters.removeAll()
            let h = s.helloWaiter
            s.helloWaiter = nil
            let c = s.closedWaiters
            s.closedWaiters = []
            return (a, h, c, true)
        }
        guard wasOpen else { return }
        tasks.cancelAll()
        if orderly {
            logger.debug("session closed", metadata: ["chan.reason": "\(error)"])
        } else {
            logger.info("session ended", metadata: ["chan.reason": "\(error)"])
        }
        if sendGoAway { write(.goAway(reason: error.reason)) }
        transport.close()
        for w in receiveWaiters { w.continuation.resume(throwing: error) }
        for w in creditWaiters { w.continuation.resume(throwing: error) }
        for w in acceptWaiters {
            if orderly { w.continuation.resume(returning: nil) } else { w.continuation.resume(throwing: error) }
        }
        helloWaiter?.continuation.resume(throwing: error)
        for c in closedWaiters { c.resume(returning: error) }
    }

    /// Encodes (for wire transports) and writes one frame. Errors here end the session.
    func write(_ frame: Frame) {
        do {
            try writeThrowing(frame, resolver: nil)
        } catch {
            logger.error("could not write frame", metadata: ["chan.frame": "\(frame.kindName)", "chan.error": "\(error)"])
        }
    }

    /// Writes one frame; returns the bytes charged against flow control.
    @discardableResult
    func writeThrowing(_ frame: Frame, resolver: MsgpackPacker.ChannelResolver?) throws -> Int {
        let maxFrame = state.withLockedValue { s in s.peerHello?.maxFrameSize ?? configuration.maxFrameSize }
        if transport.encodesFrames {
            // Encoded and copied into the transport's outbound buffer under one lock, so
            // frames from concurrent senders keep their order and are never interleaved.
            let size: Int = try packerLock.withLock {
                packer.reset()
                try frame.write(into: packer, maxFrameSize: maxFrame, maxValues: limits.maxValues, resolver: resolver)
                packer.withBytes { transport.write(encoded: $0) }
                return packer.count
            }
            state.withLockedValue { s in
                s.stats.framesOut += 1
                s.stats.bytesOut += size
            }
            return size - 4
        } else {
            var outgoing = frame
            var size = 16
            if case .data(let id, let value, let fin) = frame {
                let external = try Session.externalize(value, resolver: resolver)
                // The frame's array, its type and id (and fin), as the packer would count them.
                let values = external.msgpackValueCount + (fin ? 4 : 3)
                guard values <= limits.maxValues else {
                    throw CodecError(.tooManyValues, "the frame holds \(values) msgpack values (limit \(limits.maxValues))")
                }
                size = external.estimatedSize
                outgoing = .data(id: id, value: external, fin: fin)
            }
            state.withLockedValue { s in s.stats.framesOut += 1 }
            transport.write(frame: outgoing)
            return size
        }
    }

    /// Replaces channel ends by their wire references (in-memory transport).
    static func externalize(_ value: Value, resolver: MsgpackPacker.ChannelResolver?) throws -> Value {
        guard value.containsChannel else { return value }
        switch value {
        case .channel(let end):
            guard let resolver else { throw CodecError(.channelOutsideSession, "\(end) outside a message") }
            let reference = try resolver(end)
            return .ext(type: reference.kind.rawValue, data: reference.payload)
        case .array(let a): return .array(try a.map { try externalize($0, resolver: resolver) })
        case .map(let m):
            return .map(try m.map { (key: try externalize($0.key, resolver: resolver), value: try externalize($0.value, resolver: resolver)) })
        default: return value
        }
    }

    /// Replaces wire references by usable channel ends (in-memory transport).
    static func internalize(_ value: Value, resolver: MsgpackUnpacker.ChannelResolver) throws -> Value {
        switch value {
        case .ext(let type, let data):
            let reference = try data.withUnsafeBytes { raw in try ChannelReference.parse(type: type, data: raw) }
            if let reference { return try resolver(reference) }
            return value
        case .array(let a): return .array(try a.map { try internalize($0, resolver: resolver) })
        case .map(let m):
            return .map(try m.map { (key: try internalize($0.key, resolver: resolver), value: try internalize($0.value, resolver: resolver)) })
        default: return value
        }
    }
}

