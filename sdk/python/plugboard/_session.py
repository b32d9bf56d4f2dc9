"""The Chan wire protocol (docs/PROTOCOL.md), version 1, on asyncio.

A :class:`Session` speaks length-prefixed msgpack frames over one duplex byte stream
(fds 3/4, a unix socket, a TLS connection): the handshake, channels with per-channel
flow control, channel ends inside messages, request/reply and byte streams. The plugin
is always the *acceptor*: it allocates even channel ids.

Everything here runs on the session's event loop. The public methods of the channel
ends are coroutines; :mod:`plugboard` wraps them so that a synchronous handler (which
runs in a worker thread) can call them as plain functions.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import struct
import sys
import threading
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Tuple, TypeVar

import msgpack

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "WINDOW", "ProtocolError", "PeerGone", "ChannelClosed",
    "ChannelReset", "RemoteError", "FrameTooLarge", "CallTimeout", "Session", "Sender",
    "Receiver", "ByteStreamReader", "ByteStreamWriter", "Request",
]

PROTOCOL_VERSION = 1
#: The largest frame body this side accepts (announced in HELLO).
MAX_FRAME = 16 * 1024 * 1024
#: Bytes this side buffers per channel before the sender must wait for credit.
WINDOW = 256 * 1024
#: A byte stream writer's largest chunk.
CHUNK = 64 * 1024
#: How long a side waits for the peer's HELLO.
HANDSHAKE_TIMEOUT = 10.0
#: Channels the peer may keep open with OPEN; past it, OPEN is refused with RESET.
MAX_CHANNELS_OPENED_BY_PEER = 1024
#: Channel ends the peer may have sent in messages and still open here.
MAX_ENDS_SENT_BY_PEER = 65536
#: msgpack values per frame, at any depth (the protocol's default).
MAX_VALUES = 262144
#: Nesting of arrays and maps, counting the frame's own array.
MAX_DEPTH = 32

HELLO, OPEN, DATA, CLOSE, CREDIT, RESET, GOAWAY = range(7)
_ARITY = {HELLO: (2,), OPEN: (3,), DATA: (3, 4), CLOSE: (2,), CREDIT: (3,), RESET: (3,), GOAWAY: (2,)}
EXT_SENDER, EXT_RECEIVER, EXT_STREAM_READER, EXT_STREAM_WRITER = 0x50, 0x51, 0x52, 0x53
_MAX_CREDIT = (1 << 63) - 1

T = TypeVar("T")


class ProtocolError(Exception):
    """The peer broke the protocol; the session ends with GOAWAY."""


class PeerGone(Exception):
    """The session ended (GOAWAY, end of file, or a protocol violation)."""


class ChannelClosed(Exception):
    """The other end of the channel was closed: the peer reads no more (or sends no more)."""


class ChannelReset(Exception):
    """The channel was aborted with RESET; the message is the reason."""


class FrameTooLarge(Exception):
    """A frame to send is over the peer's ``max_frame`` (nothing was written)."""


class CallTimeout(Exception):
    """A request got no reply in time."""


class RemoteError(Exception):
    """An error reply ``{"error": {"code", "message"}}``: ``code`` passes on unchanged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _dual(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A coroutine method that, called from another thread (a synchronous handler), blocks instead."""
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        s = self._session
        if threading.get_ident() == s._thread:
            return fn(self, *args, **kwargs)
        return asyncio.run_coroutine_threadsafe(fn(self, *args, **kwargs), s._loop).result()
    return wrapper


# ---- channel state

class _Out:
    """A channel whose sender this side holds."""

    __slots__ = ("id", "credit", "ready", "closed", "error", "waiter")

    def __init__(self, cid: int, credit: int, ready: bool) -> None:
        self.id = cid
        self.credit = credit
        self.ready = ready          # the peer knows the channel (its end was sent, or it was OPENed)
        self.closed = False         # we sent fin/CLOSE, or the peer's receiver closed
        self.error: Optional[BaseException] = None
        self.waiter: Optional[asyncio.Future] = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _In:
    """A channel whose receiver this side holds."""

    __slots__ = ("id", "label", "queue", "unread", "uncredited", "ended", "error", "waiter",
                 "opened_by_peer", "end_from_peer", "ready")

    def __init__(self, cid: int, label: str, ready: bool) -> None:
        self.id = cid
        self.label = label
        self.queue: Deque[Tuple[Any, int]] = collections.deque()
        self.unread = 0
        self.uncredited = 0
        self.ended = False          # the sender finished (fin or CLOSE)
        self.error: Optional[BaseException] = None
        self.waiter: Optional[asyncio.Future] = None
        self.opened_by_peer = False
        self.end_from_peer = False
        self.ready = ready

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


# ---- channel ends (what applications hold)

class _End:
    """A channel end: held here, possibly to be sent to the peer once in a message."""

    _ext_type = 0

    def __init__(self, session: "Session", cid: int, local: bool) -> None:
        self._session = session
        self._id = cid
        self._local = local           # made here, not yet sent: may travel in one message
        self._moved = False           # sent to the peer
        self._pair: Optional[_End] = None
        self._done = False

    @property
    def id(self) -> int:
        """The channel id."""
        return self._id

    def _release(self) -> None:
        """Closes the end if the application forgot it (as Swift does when the last reference goes)."""
        if self._done or self._moved:
            return
        self._done = True
        s = self._session
        if s._closed:
            return
        try:
            if threading.get_ident() == s._thread:
                self._forget()
            else:
                s._loop.call_soon_threadsafe(self._forget)
        except RuntimeError:
            pass

    def _forget(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:
            pass


class Sender(_End):
    """The sending end of a channel: :meth:`send` messages, :meth:`request`, :meth:`close`."""

    _ext_type = EXT_SENDER

    @_dual
    async def send(self, value: Any, *, last: bool = False) -> None:
        """Sends one message, waiting for credit; ``last=True`` finishes the channel in the same frame."""
        await self._session._send_data(self, value, last)

    @_dual
    async def request(self, body: Any, timeout: Optional[float] = 10.0) -> Any:
        """Sends ``{"body", "reply"}`` and returns the ``ok`` of the reply; raises :class:`RemoteError`."""
        reply_tx, reply_rx = self._session.pipe()
        await self.send({"body": body, "reply": reply_tx})
        del reply_tx
        try:
            if timeout is None:
                answer = await reply_rx.receive()
            else:
                try:
                    answer = await asyncio.wait_for(reply_rx.receive(), timeout)
                except asyncio.TimeoutError:
                    raise CallTimeout(f"no reply within {timeout:g} s") from None
        except EOFError:
            raise RemoteError("no.reply", "the reply channel closed without a reply") from None
        finally:
            reply_rx.close()
        if isinstance(answer, dict):
            if "ok" in answer:
                return answer["ok"]
            error = answer.get("error")
            if isinstance(error, dict):
                return _raise_remote(error)
        raise RemoteError("bad.message", f"a reply that is neither ok nor error: {answer!r:.200}")

    def close(self) -> None:
        """Ends the channel: the receiver sees the end after the messages already sent."""
        self._release()

    def _forget(self) -> None:
        self._session._close_out(self._id)


def _raise_remote(error: Dict[Any, Any]) -> Any:
    raise RemoteError(str(error.get("code", "plugin.error")), str(error.get("message", "")))


class Receiver(_End):
    """The receiving end of a channel: :meth:`receive` messages (or ``async for``)."""

    _ext_type = EXT_RECEIVER

    @property
    def label(self) -> str:
        """The label of an OPEN (empty for channels handed over in messages)."""
        st = self._session._in.get(self._id)
        return st.label if st else ""

    @_dual
    async def receive(self) -> Any:
        """The next message; raises :class:`EOFError` at the end of the channel."""
        return await self._session._receive(self._id)

    @_dual
    async def next_request(self) -> Optional["Request"]:
        """The next request on this channel, or None at its end. Other messages are skipped."""
        while True:
            try:
                message = await self.receive()
            except EOFError:
                return None
            reply = message.get("reply") if isinstance(message, dict) else None
            if isinstance(reply, Sender) and "body" in message:
                return Request(message["body"], reply)

    def __aiter__(self) -> "Receiver":
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except EOFError:
            raise StopAsyncIteration from None

    def __iter__(self) -> Any:
        """Messages until the end of the channel (from a synchronous handler's thread)."""
        while True:
            try:
                yield self.receive()
            except EOFError:
                return

    def close(self) -> None:
        """Stops receiving: the sender's next send fails."""
        self._release()

    def _forget(self) -> None:
        self._session._close_in(self._id)


class ByteStreamWriter(Sender):
    """Writes a byte stream: :meth:`write` bytes, then :meth:`close` (end of file)."""

    _ext_type = EXT_STREAM_WRITER

    @_dual
    async def write(self, data: bytes) -> None:
        """Writes ``data`` in chunks of at most 64 KiB, with flow control."""
        view = memoryview(bytes(data))
        for start in range(0, len(view), CHUNK):
            await self._session._send_data(self, bytes(view[start:start + CHUNK]), False)

    @_dual
    async def reset(self, reason: str) -> None:
        """Aborts the stream: the reader's next read fails with ``reason``."""
        if not self._done and not self._moved:
            self._done = True
            self._session._reset_out(self._id, reason)


class ByteStreamReader(Receiver):
    """Reads a byte stream: :meth:`read` chunks (``b""`` at end of file), ``async for``, :meth:`read_all`."""

    _ext_type = EXT_STREAM_READER

    @_dual
    async def read(self) -> bytes:
        """The next chunk, or ``b""`` at end of file."""
        try:
            chunk = await self.receive()
        except EOFError:
            return b""
        if not isinstance(chunk, (bytes, bytearray)):
            raise ProtocolError(f"a byte stream carried a {type(chunk).__name__}, not bin")
        return bytes(chunk) if chunk else await self.read()

    @_dual
    async def read_all(self, limit: Optional[int] = None) -> bytes:
        """Everything until end of file (at most ``limit`` bytes: more raises :class:`ValueError`)."""
        parts: List[bytes] = []
        total = 0
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            total += len(chunk)
            if limit is not None and total > limit:
                self.close()
                raise ValueError(f"the stream is over {limit} bytes")
            parts.append(chunk)

    def __iter__(self) -> Any:
        """Chunks until end of file (from a synchronous handler's thread)."""
        while True:
            chunk = self.read()
            if not chunk:
                return
            yield chunk

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk


class Request:
    """A request received on a channel: its ``body``, answered once with :meth:`respond` or :meth:`fail`."""

    def __init__(self, body: Any, reply: Sender) -> None:
        self.body = body
        self.reply = reply
        self._session = reply._session

    @_dual
    async def respond(self, value: Any) -> None:
        """Answers ``{"ok": value}`` in one DATA frame with fin."""
        await self.reply.send({"ok": value}, last=True)

    @_dual
    async def fail(self, code: str, message: str) -> None:
        """Answers ``{"error": {"code", "message"}}`` in one DATA frame with fin."""
        await self.reply.send({"error": {"code": code, "message": message}}, last=True)


# ---- the session

class Session:
    """One Chan session over a duplex byte stream, acceptor side (even channel ids).

    ``reader`` is an :class:`asyncio.StreamReader`; ``writer`` an :class:`asyncio.StreamWriter`
    (or anything with ``write``, ``drain`` and ``close``).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: Any, *, name: str, meta: Any = None,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> None:
        self._reader = reader
        self._writer = writer
        self.name = name
        self._meta = meta if meta is not None else {}
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._next_id = 2
        self._highest_peer = 0
        self._out: Dict[int, _Out] = {}
        self._in: Dict[int, _In] = {}
        self._peer_opened = 0
        self._peer_ends = 0
        self._accepted: Deque[Receiver] = collections.deque()
        self._accept_waiter: Optional[asyncio.Future] = None
        self._closed = False
        self.end_reason: Optional[str] = None
        self.peer_name = "plugboardd"
        self.peer_max_frame = 0
        self.peer_window = 0
        self._ended = self._loop.create_future()
        self._reader_task: Optional[asyncio.Task] = None
        self._packing: Optional[List[_End]] = None
        self.dropped_after_close = 0
        self._bridges: "set[asyncio.Task]" = set()

    # -- handshake

    async def start(self) -> None:
        """Sends HELLO, waits for the peer's (10 s at most) and starts reading frames."""
        self._write_frame([HELLO, {"protocol": PROTOCOL_VERSION, "name": self.name, "max_frame": MAX_FRAME,
                                   "window": WINDOW, "meta": self._meta}], check=MAX_FRAME)
        try:
            frame = await asyncio.wait_for(self._read_frame(), HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            self._violation_goaway(f"no HELLO from the peer within {HANDSHAKE_TIMEOUT:g} s")
            raise PeerGone("no HELLO from the peer in time") from None
        except ProtocolError as e:
            self._violation_goaway(str(e))
            raise
        if frame is None:
            self._shutdown("the peer closed the session before its HELLO")
            raise PeerGone("the peer closed the session before its HELLO")
        frame, _, _ = frame
        if frame[0] == GOAWAY:
            self._shutdown(f"the peer refused the session: {frame[1]}")
            raise PeerGone(f"the peer refused the session: {frame[1]}")
        if frame[0] != HELLO or not isinstance(frame[1], dict):
            self._violation_goaway("the first frame must be HELLO")
            raise ProtocolError("the first frame must be HELLO")
        hello = frame[1]
        proto = hello.get("protocol")
        peer = hello.get("name", "unnamed")
        self.peer_name = peer if isinstance(peer, str) else "unnamed"
        if type(proto) is not int:
            self._violation_goaway('HELLO lacks an integer "protocol"')
            raise ProtocolError('HELLO lacks an integer "protocol"')
        if proto != PROTOCOL_VERSION:
            reason = f"peer {self.peer_name} speaks protocol {proto}; this side speaks {PROTOCOL_VERSION}"
            self._violation_goaway(reason)
            raise ProtocolError("incompatible protocol: " + reason)
        mf, win = hello.get("max_frame"), hello.get("window")
        if type(mf) is not int or not 64 <= mf <= 0xFFFFFFFF or type(win) is not int or win < 1024:
            self._violation_goaway("HELLO max_frame or window missing or out of range")
            raise ProtocolError("HELLO max_frame or window missing or out of range")
        self.peer_max_frame, self.peer_window = mf, win
        self._reader_task = self._loop.create_task(self._read_loop())

    async def wait_closed(self) -> str:
        """Waits until the session ends; returns why."""
        return await asyncio.shield(self._ended)

    @property
    def closed(self) -> bool:
        """Whether the session has ended."""
        return self._closed

    def close(self, reason: str = "done") -> None:
        """Ends the session in order: GOAWAY, then the transport is closed."""
        if self._closed:
            return
        try:
            self._write_frame([GOAWAY, reason])
        except Exception:
            pass
        self._shutdown(reason)

    # -- making channels

    def _new_id(self) -> int:
        cid = self._next_id
        self._next_id += 2
        return cid

    def open(self, label: str) -> Sender:
        """Opens a channel (OPEN) whose receiver the peer accepts."""
        self._check_open()
        cid = self._new_id()
        self._write_frame([OPEN, cid, label])
        self._out[cid] = _Out(cid, self.peer_window, ready=True)
        return Sender(self, cid, local=False)

    def pipe(self) -> Tuple[Sender, Receiver]:
        """A fresh channel with both ends here; send one of them to the peer in a message."""
        self._check_open()
        cid = self._new_id()
        tx, rx = Sender(self, cid, local=True), Receiver(self, cid, local=True)
        tx._pair, rx._pair = rx, tx
        self._out[cid] = _Out(cid, self.peer_window, ready=False)
        self._in[cid] = _In(cid, "", ready=False)
        return tx, rx

    def byte_stream(self) -> Tuple[ByteStreamWriter, ByteStreamReader]:
        """A fresh byte stream with both ends here; send the reader (or the writer) to the peer."""
        self._check_open()
        cid = self._new_id()
        w, r = ByteStreamWriter(self, cid, local=True), ByteStreamReader(self, cid, local=True)
        w._pair, r._pair = r, w
        self._out[cid] = _Out(cid, self.peer_window, ready=False)
        self._in[cid] = _In(cid, "", ready=False)
        return w, r

    async def accept(self) -> Optional[Receiver]:
        """The next channel the peer opened, or None once the session has ended."""
        while not self._accepted:
            if self._closed:
                return None
            self._accept_waiter = self._loop.create_future()
            await self._accept_waiter
        return self._accepted.popleft()

    def _check_open(self) -> None:
        if self._closed:
            raise PeerGone(f"the session with {self.peer_name} has ended: {self.end_reason}")

    # -- encoding

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, _End):
            if obj._session is not self:
                raise ValueError("a channel end of another session cannot be sent")
            if not obj._local and not obj._moved and not obj._done:
                obj = self._bridge(obj)      # an end received from the peer: pumped through a new one
            elif not obj._local or obj._moved or obj._done:
                raise ValueError("channel end moved: only an end made here can be sent, and only once")
            if self._packing is not None:
                self._packing.append(obj)
            return msgpack.ExtType(obj._ext_type, obj._id.to_bytes(8, "big"))
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        raise TypeError(f"cannot send a {type(obj).__name__} (msgpack takes None, bool, int, float, str, bytes, list, dict)")

    def _bridge(self, end: _End) -> _End:
        """An end received from the peer cannot travel back as it is: a new local channel of
        the same kind goes instead, and a task pumps every message between the two (as
        Swift's ``Request.respond`` bridges)."""
        if isinstance(end, (ByteStreamReader, ByteStreamWriter)):
            w, r = self.byte_stream()
            new_local: Tuple[Sender, Receiver] = (w, r)
        else:
            new_local = self.pipe()
        tx, rx = new_local
        end._done = True                   # the pump owns it now
        if isinstance(end, Receiver):      # we read from `end`, the peer reads the new receiver
            source, sink, outgoing = end, tx, rx
        else:                              # the peer writes into the new sender, we forward to `end`
            source, sink, outgoing = rx, end, tx
        task = self._loop.create_task(self._pump(source, sink))
        self._bridges.add(task)
        task.add_done_callback(self._bridges.discard)
        return outgoing

    async def _pump(self, source: _End, sink: _End) -> None:
        try:
            while True:
                try:
                    value = await self._receive(source._id)
                except EOFError:
                    break
                await self._send_data(sink, value, False)
        except (ChannelClosed, ChannelReset, PeerGone, ProtocolError):
            pass
        finally:
            self._close_in(source._id)
            self._close_out(sink._id)

    def _pack(self, frame: List[Any]) -> Tuple[bytes, List[_End]]:
        self._packing = []
        try:
            body = msgpack.packb(frame, use_bin_type=True, default=self._default)
            return body, self._packing
        finally:
            self._packing = None

    def _write_frame(self, frame: List[Any], check: Optional[int] = None) -> int:
        body, ends = self._pack(frame)
        limit = check if check is not None else self.peer_max_frame
        if len(body) > limit:
            raise FrameTooLarge(f"a frame of {len(body)} bytes is over the peer's max_frame of {limit}")
        self._mark_sent(ends)
        self._writer.write(struct.pack(">I", len(body)) + body)
        return len(body)

    def _mark_sent(self, ends: List[_End]) -> None:
        for end in ends:
            end._moved = True
            end._local = False
            pair = end._pair
            if pair is not None:
                pair._local = False
                pair._pair = None
            end._pair = None
            cid = end._id
            if isinstance(end, Sender):
                # The peer sends, we keep the receiver.
                self._out.pop(cid, None)
                st = self._in.get(cid)
                if st is not None:
                    st.ready = True
            else:
                self._in.pop(cid, None)
                st2 = self._out.get(cid)
                if st2 is not None:
                    st2.ready = True
                    st2.wake()

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            self._shutdown(f"writing to the peer failed: {e}")

    # -- sending

    async def _send_data(self, end: _End, value: Any, last: bool) -> None:
        cid = end._id
        while True:
            self._check_open()
            st = self._out.get(cid)
            if st is None or st.closed:
                if st is not None and st.error is not None:
                    raise st.error
                raise ChannelClosed(f"channel {cid} is closed")
            if st.error is not None:
                raise st.error
            if st.ready and st.credit > 0:
                break
            st.waiter = self._loop.create_future()
            await st.waiter
        frame = [DATA, cid, value, True] if last else [DATA, cid, value]
        size = self._write_frame(frame)
        st.credit -= size
        if last:
            st.closed = True
            self._out.pop(cid, None)
            end._done = True
        await self._drain()

    def _close_out(self, cid: int) -> None:
        st = self._out.pop(cid, None)
        if st is None:
            return
        pair_in = self._in.get(cid)
        if not st.ready:
            # Neither end reached the peer: nothing on the wire; the local receiver ends.
            if pair_in is not None:
                pair_in.ended = True
                pair_in.wake()
            return
        if not st.closed and not self._closed:
            st.closed = True
            try:
                self._write_frame([CLOSE, cid])
            except Exception:
                pass

    def _reset_out(self, cid: int, reason: str) -> None:
        st = self._out.pop(cid, None)
        if st is not None and st.ready and not st.closed and not self._closed:
            st.closed = True
            self._write_frame([RESET, cid, reason])

    def _close_in(self, cid: int) -> None:
        st = self._in.pop(cid, None)
        if st is None:
            return
        if st.opened_by_peer:
            self._peer_opened -= 1
        if st.end_from_peer:
            self._peer_ends -= 1
        if not st.ready:
            pair_out = self._out.get(cid)
            if pair_out is not None:
                pair_out.closed = True
                pair_out.error = ChannelClosed(f"channel {cid}: its reader went away")
                pair_out.wake()
            return
        if not st.ended and not self._closed:
            try:
                self._write_frame([CLOSE, cid])
            except Exception:
                pass

    # -- receiving

    async def _receive(self, cid: int) -> Any:
        while True:
            st = self._in.get(cid)
            if st is None:
                if self._closed:
                    raise PeerGone(f"the session with {self.peer_name} has ended: {self.end_reason}")
                raise EOFError
            if st.error is not None:
                raise st.error
            if st.queue:
                value, size = st.queue.popleft()
                st.unread -= size
                if not st.ended:
                    st.uncredited += size
                    if st.uncredited >= WINDOW // 2:
                        n, st.uncredited = st.uncredited, 0
                        if not self._closed:
                            self._write_frame([CREDIT, cid, n])
                return value
            if st.ended:
                self._in.pop(cid, None)
                if st.opened_by_peer:
                    self._peer_opened -= 1
                if st.end_from_peer:
                    self._peer_ends -= 1
                raise EOFError
            if self._closed:
                raise PeerGone(f"the session with {self.peer_name} has ended: {self.end_reason}")
            st.waiter = self._loop.create_future()
            await st.waiter

    # -- the reader

    async def _read_frame(self) -> Optional[Tuple[List[Any], int, List[_End]]]:
        try:
            prefix = await self._reader.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise PeerGone("the stream ended inside a frame") from None
            return None
        (length,) = struct.unpack(">I", prefix)
        if length == 0 or length > MAX_FRAME:
            raise ProtocolError(f"bad frame length {length} (max_frame {MAX_FRAME})")
        try:
            body = await self._reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise PeerGone("the stream ended inside a frame") from None
        refs: List[_End] = []

        def ext_hook(code: int, data: bytes) -> Any:
            if EXT_SENDER <= code <= EXT_STREAM_WRITER:
                if len(data) != 8:
                    raise ProtocolError(f"channel reference (ext type {code}) must carry 8 bytes")
                cid = int.from_bytes(data, "big")
                cls = {EXT_SENDER: Sender, EXT_RECEIVER: Receiver,
                       EXT_STREAM_READER: ByteStreamReader, EXT_STREAM_WRITER: ByteStreamWriter}[code]
                end = cls(self, cid, local=False)
                end._done = True      # not ours until registered
                refs.append(end)
                return end
            return msgpack.ExtType(code, data)

        try:
            frame = msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=ext_hook)
        except ProtocolError:
            raise
        except msgpack.ExtraData:
            raise ProtocolError("trailing bytes after the value") from None
        except UnicodeDecodeError:
            raise ProtocolError("a string is not valid UTF-8") from None
        except Exception as e:
            raise ProtocolError(f"malformed frame: {e}") from None
        if not isinstance(frame, list) or not frame or type(frame[0]) is not int or frame[0] not in _ARITY:
            raise ProtocolError("a frame must be an array starting with a known frame type")
        kind = frame[0]
        if len(frame) not in _ARITY[kind]:
            raise ProtocolError(f"frame type {kind} with {len(frame)} fields")
        if kind in (OPEN, DATA, CLOSE, CREDIT, RESET) and not (type(frame[1]) is int and frame[1] >= 0):
            raise ProtocolError("field 1 must be a channel id")
        if kind == DATA and len(frame) == 4 and type(frame[3]) is not bool:
            raise ProtocolError("DATA fin must be a boolean")
        if (kind in (OPEN, RESET) and type(frame[2]) is not str) or (kind == GOAWAY and type(frame[1]) is not str):
            raise ProtocolError("a label or reason must be a string")
        if kind == CREDIT and not (type(frame[2]) is int and frame[2] >= 0):
            raise ProtocolError("CREDIT bytes must be a non-negative integer")
        if refs and kind != DATA:
            raise ProtocolError("channel references belong in DATA values")
        return frame, length, refs

    async def _read_loop(self) -> None:
        try:
            while True:
                got = await self._read_frame()
                if got is None:
                    self._shutdown("the peer closed the session (end of file)")
                    return
                frame, size, refs = got
                got = None
                self._dispatch(frame, size, refs)
                # Drop this frame's values now: a channel end nobody keeps is closed when
                # its last reference goes, not when the next frame arrives.
                frame = refs = None
                if self._closed:
                    return
        except ProtocolError as e:
            self._violation_goaway(str(e))
        except PeerGone as e:
            self._shutdown(str(e))
        except (ConnectionError, OSError) as e:
            self._shutdown(f"reading from the peer failed: {e}")
        except asyncio.CancelledError:
            self._shutdown("cancelled")
            raise

    def _peer_id(self, cid: int) -> bool:
        return cid % 2 == 1

    def _dispatch(self, frame: List[Any], size: int, refs: List[_End]) -> None:
        kind = frame[0]
        if kind == DATA:
            cid = frame[1]
            for r in refs:
                rid = r._id
                if not self._peer_id(rid):
                    raise ProtocolError(f"the peer referenced channel {rid}, an id only this side allocates")
                if rid in self._in or rid in self._out:
                    raise ProtocolError(f"the peer reused channel id {rid}")
                self._highest_peer = max(self._highest_peer, rid)
            st = self._in.get(cid)
            if st is None or not st.ready:
                if cid in self._out:
                    raise ProtocolError(f"DATA on channel {cid}, whose sender is not held by the peer")
                existed = cid < self._next_id if not self._peer_id(cid) else cid <= self._highest_peer
                if not existed:
                    raise ProtocolError(f"DATA on unknown channel {cid}")
                self.dropped_after_close += 1
                for r in refs:
                    self._write_frame([CLOSE, r._id])
                return
            if st.ended:
                raise ProtocolError(f"DATA on channel {cid} after its end")
            self._register_refs(refs)
            st.queue.append((frame[2], size))
            st.unread += size
            if st.unread + st.uncredited > WINDOW + MAX_FRAME:
                raise ProtocolError(f"overran the flow-control window on channel {cid}")
            if len(frame) == 4 and frame[3]:
                st.ended = True
            st.wake()
        elif kind == OPEN:
            cid, label = frame[1], frame[2]
            if not self._peer_id(cid) or cid in self._in or cid in self._out:
                raise ProtocolError(f"OPEN of channel {cid}, which is not a fresh peer channel id")
            self._highest_peer = max(self._highest_peer, cid)
            if self._peer_opened >= MAX_CHANNELS_OPENED_BY_PEER:
                self._write_frame([RESET, cid, f"too many open channels: limit {MAX_CHANNELS_OPENED_BY_PEER}"])
                return
            st = _In(cid, label, ready=True)
            st.opened_by_peer = True
            self._peer_opened += 1
            self._in[cid] = st
            self._accepted.append(Receiver(self, cid, local=False))
            if self._accept_waiter is not None and not self._accept_waiter.done():
                self._accept_waiter.set_result(None)
        elif kind == CLOSE:
            cid = frame[1]
            st_in = self._in.get(cid)
            if st_in is not None and st_in.ready:
                st_in.ended = True
                st_in.wake()
            st_out = self._out.get(cid)
            if st_out is not None and st_out.ready:
                st_out.closed = True
                st_out.error = ChannelClosed(f"channel {cid} closed by the peer")
                self._out.pop(cid, None)
                st_out.wake()
        elif kind == CREDIT:
            st_out = self._out.get(frame[1])
            if st_out is not None:
                st_out.credit = min(st_out.credit + frame[2], _MAX_CREDIT)
                st_out.wake()
        elif kind == RESET:
            cid, reason = frame[1], frame[2]
            st_in = self._in.get(cid)
            if st_in is not None and st_in.ready:
                st_in.queue.clear()
                st_in.unread = 0
                st_in.error = ChannelReset(reason)
                st_in.wake()
            st_out = self._out.get(cid)
            if st_out is not None and st_out.ready:
                st_out.closed = True
                st_out.error = ChannelReset(reason)
                self._out.pop(cid, None)
                st_out.wake()
        elif kind == GOAWAY:
            self._shutdown(f"GOAWAY from {self.peer_name}: {frame[1]}", goaway=frame[1])
        elif kind == HELLO:
            raise ProtocolError("a second HELLO")

    def _register_refs(self, refs: List[_End]) -> None:
        for r in refs:
            cid = r._id
            if isinstance(r, Sender):            # Sender or ByteStreamWriter: we send
                self._out[cid] = _Out(cid, self.peer_window, ready=True)
            else:
                st = _In(cid, "", ready=True)
                st.end_from_peer = True
                self._peer_ends += 1
                self._in[cid] = st
            r._done = False
        if self._peer_ends > MAX_ENDS_SENT_BY_PEER:
            raise ProtocolError(f"too many channel ends sent by the peer and open here: limit {MAX_ENDS_SENT_BY_PEER}")

    # -- ending

    def _violation_goaway(self, reason: str) -> None:
        if self._closed:
            return
        try:
            self._write_frame([GOAWAY, f"peer {self.peer_name}: {reason}"], check=0xFFFFFFFF)
        except Exception:
            pass
        self._shutdown(f"protocol violation: {reason}")

    def _shutdown(self, reason: str, goaway: Optional[str] = None) -> None:
        if self._closed:
            return
        self._closed = True
        self.end_reason = reason
        self.goaway_reason = goaway
        for st in list(self._in.values()):
            st.wake()
        for st2 in list(self._out.values()):
            st2.wake()
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)
        try:
            self._writer.close()
        except Exception:
            pass
        if not self._ended.done():
            self._ended.set_result(reason)
        task = self._reader_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()


def run_in_loop(session: Session, coro_fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> Any:
    """Calls ``coro_fn``: a coroutine on the session's loop thread, a blocking call elsewhere."""
    if threading.get_ident() == session._thread:
        return coro_fn(*args, **kwargs)
    return asyncio.run_coroutine_threadsafe(coro_fn(*args, **kwargs), session._loop).result()
