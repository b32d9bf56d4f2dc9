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

    /// Who made the channel, for the limits on what the peer may hold open here.
    enum Origin {
        /// Made here (``Session/open(label:)``, a pipe, a byte stream).
        case local
        /// Opened by the peer with OPEN (``Session/Configuration/maxChannelsOpenedByPeer``).
        case openedByPeer
        /// Its end was sent by the peer inside a message (``Session/Configuration/maxEndsSentByPeer``).
        case sentByPeer
    }

    var role: Role
    let isByteStream: Bool
    let origin: Origin

    // Receiving side.
    var inbox = CircularBuffer<(value: Value, size: Int, values: Int)>()
    var inboxBytes = 0
    /// msgpack values in `inbox`: what its messages cost decoded, which bytes do not say.
    var inboxValues = 0
    var uncredited = 0
    var receiveWaiters = CircularBuffer<Waiter<Value?>>()
    /// The sender closed: after the inbox drains, receives return nil.
    var finished = false

    // Sending side.
    var credit = 0
    /// Sends waiting for credit, or for the turn.
    var creditWaiters = CircularBuffer<Waiter<Void>>()
    /// A send holds the channel's turn: it passed the credit check and is not charged yet.
    var sending = false

    /// Set when the channel ended abnormally (reset, receiver closed, peer gone).
    var failure: ChanError?

    // For a local pipe: whether each end's object is still alive here.
    var senderAlive = true
    var receiverAlive = true

    init(role: Role, isByteStream: Bool, origin: Origin, credit: Int = 0) {
        self.role = role
        self.isByteStream = isByteStream
        self.origin = origin
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
    /// OPENs from the peer refused with a RESET because it already had
    /// ``Session/Configuration/maxChannelsOpenedByPeer`` channels open here.
    public var refusedOpens = 0
    /// Channels open here that the peer opened with OPEN.
    public var channelsOpenedByPeer = 0
    /// Channels open here whose end the peer sent inside a message.
    public var endsSentByPeer = 0
}
