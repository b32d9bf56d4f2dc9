import NIOCore

/// A waiter parked in `receive`, `accept` or a credit wait.
struct Waiter<T: Sendable>: Sendable {
    let id: UInt64
    let continuation: UnsafeContinuation<T, any Error>
}

/// One channel's bookkeeping on this side of a session. Only touched under the session lock.
final class ChannelState {
    enum Role {
        /// Made by ``Session/makePipe()``; neither end has been sent yet.
        case localPipe
        /// This side holds the sender; the peer holds the receiver.
        case sending
        /// This side holds the receiver; the peer holds the sender.
        case receiving
    }

    var role: Role
    let isByteStream: Bool

    // Receiving side.
    var inbox = CircularBuffer<(value: Value, size: Int)>()
    var inboxBytes = 0
    var uncredited = 0
    var receiveWaiters = CircularBuffer<Waiter<Value?>>()
    /// The sender closed: after the inbox drains, receives return nil.
    var finished = false

    // Sending side.
    var credit = 0
    var creditWaiters = CircularBuffer<Waiter<Void>>()

    /// Set when the channel ended abnormally (reset, receiver closed, peer gone).
    var failure: ChanError?

    // For a local pipe: whether each end's object is still alive here.
    var senderAlive = true
    var receiverAlive = true

    init(role: Role, isByteStream: Bool, credit: Int = 0) {
        self.role = role
        self.isByteStream = isByteStream
        self.credit = credit
    }
}

/// Counters describing a session's traffic and trouble.
public struct SessionStats: Sendable, Hashable {
    /// Frames received from the peer, malformed ones included.
    public var framesIn = 0
    /// Frames written to the transport.
    public var framesOut = 0
    /// Bytes received, length prefixes included (wire transports only).
    public var bytesIn = 0
    /// Bytes written, length prefixes included (wire transports only).
    public var bytesOut = 0
    /// Messages that arrived for a channel this side had already closed (counted, not lost silently).
    public var droppedAfterClose = 0
    /// Channels currently open on this side.
    public var openChannels = 0
    /// Bytes received and not yet read, summed over all channels.
    public var bufferedBytes = 0
}
