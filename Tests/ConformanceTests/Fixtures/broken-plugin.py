#!/usr/bin/env python3
"""A deliberately broken plugin: the conformance kit's fixture (Tests/ConformanceTests).

It is the Python plugin of docs/PROTOCOL.md, "Writing a plugin in Python", with faults
switched on by words in PLUGBOARD_OPTIONS (the kit's --options):

  slow-hello          waits for the daemon's HELLO before sending its own
  bad-declaration     declares a hook whose phase is "sometimes"
  mangle-int          its echo turns integers above 2^32 into floats
  forward-ends        its echo sends back the channel ends it received, as they are
  no-credit           never grants CREDIT
  ignore-window       on each call, sends 4 engine requests of 700 bytes at once, whatever its credit
  die-on-close        exits when the daemon closes a reply channel (a call it gave up on)
  crash-on-bad-frame  exits without a GOAWAY on a protocol violation
  ignore-goaway       goes on reading after GOAWAY, until end of file
"""
import os
import struct
import sys

NAME = os.environ.get("PLUGBOARD_PLUGIN_NAME", "broken")
FAULTS = set(os.environ.get("PLUGBOARD_OPTIONS", "").split())
MAX_FRAME = 16 * 1024 * 1024   # largest frame body we accept
WINDOW = 256 * 1024            # bytes we buffer per channel before the sender waits
IN_FD, OUT_FD = 3, 4

HELLO, OPEN, DATA, CLOSE, CREDIT, RESET, GOAWAY = range(7)
ARITY = {HELLO: (2,), OPEN: (3,), DATA: (3, 4), CLOSE: (2,), CREDIT: (3,), RESET: (3,), GOAWAY: (2,)}
SENDER, RECEIVER, STREAM_READER, STREAM_WRITER = 0x50, 0x51, 0x52, 0x53


class Ext:
    """A msgpack ext value; types 0x50..0x53 are channel ends."""
    def __init__(self, type, data):
        self.type, self.data = type, data

    def channel_id(self):
        return int.from_bytes(self.data, "big") if 0x50 <= self.type <= 0x53 else None


class ProtocolError(Exception):
    pass


# ---- msgpack: every type on decode; nil, bool, int, float, str, bin, array, map, ext on encode

def pack(v):
    if v is None: return b"\xc0"
    if v is True: return b"\xc3"
    if v is False: return b"\xc2"
    if isinstance(v, int):
        if "mangle-int" in FAULTS and v > 0xffffffff: return b"\xcb" + struct.pack(">d", float(v))
        if 0 <= v <= 0x7f: return bytes([v])
        if -32 <= v < 0: return struct.pack(">b", v)
        if 0 <= v <= 0xff: return b"\xcc" + struct.pack(">B", v)
        if 0 <= v <= 0xffff: return b"\xcd" + struct.pack(">H", v)
        if 0 <= v <= 0xffffffff: return b"\xce" + struct.pack(">I", v)
        if v >= 0: return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float): return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        n = len(b)
        if n < 32: return bytes([0xa0 | n]) + b
        if n < 0x100: return b"\xd9" + struct.pack(">B", n) + b
        if n < 0x10000: return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(v, (bytes, bytearray)):
        n = len(v)
        if n < 0x100: return b"\xc4" + struct.pack(">B", n) + bytes(v)
        if n < 0x10000: return b"\xc5" + struct.pack(">H", n) + bytes(v)
        return b"\xc6" + struct.pack(">I", n) + bytes(v)
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n) if n < 0x10000 else b"\xdd" + struct.pack(">I", n)
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n) if n < 0x10000 else b"\xdf" + struct.pack(">I", n)
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    if isinstance(v, Ext):
        n = len(v.data)
        head = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}.get(n)
        if head is None:
            head = (b"\xc7" + struct.pack(">B", n) if n < 0x100 else
                    b"\xc8" + struct.pack(">H", n) if n < 0x10000 else b"\xc9" + struct.pack(">I", n))
        return head + struct.pack(">b", v.type) + v.data
    raise TypeError(f"cannot pack {type(v).__name__}")


def unpack(body):
    """Decodes exactly one value, with the limits the daemon applies too."""
    pos = 0

    def take(n):
        nonlocal pos
        if n > len(body) - pos:
            raise ProtocolError("declared length exceeds the bytes present")
        chunk = body[pos:pos + n]
        pos += n
        return chunk

    def uint(n):
        return int.from_bytes(take(n), "big")

    def ext(t, data):
        if 0x50 <= t <= 0x53 and len(data) != 8:
            raise ProtocolError(f"channel reference (ext type {t}) must carry 8 bytes")
        return Ext(t, data)

    def value(depth):
        head = take(1)[0]
        if head <= 0x7f: return head
        if head >= 0xe0: return head - 0x100
        if head <= 0x8f: return container(head & 0x0f, True, depth)
        if head <= 0x9f: return container(head & 0x0f, False, depth)
        if head <= 0xbf: return text(head & 0x1f)
        if head == 0xc0: return None
        if head == 0xc2: return False
        if head == 0xc3: return True
        if head in (0xc4, 0xc5, 0xc6): return take(uint(1 << (head - 0xc4)))
        if head in (0xc7, 0xc8, 0xc9):
            n = uint(1 << (head - 0xc7))
            return ext(struct.unpack(">b", take(1))[0], take(n))
        if head == 0xca: return struct.unpack(">f", take(4))[0]
        if head == 0xcb: return struct.unpack(">d", take(8))[0]
        if 0xcc <= head <= 0xcf: return uint(1 << (head - 0xcc))
        if 0xd0 <= head <= 0xd3:
            n = 1 << (head - 0xd0)
            return int.from_bytes(take(n), "big", signed=True)
        if 0xd4 <= head <= 0xd8:
            t = struct.unpack(">b", take(1))[0]
            return ext(t, take(1 << (head - 0xd4)))
        if head in (0xd9, 0xda, 0xdb): return text(uint(1 << (head - 0xd9)))
        if head in (0xdc, 0xdd): return container(uint(2 if head == 0xdc else 4), False, depth)
        if head in (0xde, 0xdf): return container(uint(2 if head == 0xde else 4), True, depth)
        raise ProtocolError(f"invalid msgpack byte 0x{head:02x}")   # 0xc1

    def text(n):
        try:
            return take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not valid UTF-8")

    def container(n, is_map, depth):
        if depth >= 32:
            raise ProtocolError("arrays and maps nest deeper than 32")
        if n > len(body) - pos:
            raise ProtocolError("declared length exceeds the bytes present")
        if not is_map:
            return [value(depth + 1) for _ in range(n)]
        result = {}
        for _ in range(n):
            k, v = value(depth + 1), value(depth + 1)
            k = repr(k) if isinstance(k, (list, dict)) else k
            result.setdefault(k, v)                 # the first of duplicate keys wins
        return result

    if not body:
        raise ProtocolError("empty frame")
    result = value(0)
    if pos != len(body):
        raise ProtocolError("trailing bytes after the value")
    return result


def channel_refs(v):
    """Every channel end inside a value."""
    if isinstance(v, Ext) and v.channel_id() is not None:
        yield v
    elif isinstance(v, list):
        for x in v: yield from channel_refs(x)
    elif isinstance(v, dict):
        for x in v.values(): yield from channel_refs(x)


# ---- frames

def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(IN_FD, n - len(data))
        if not chunk:
            if data:
                raise ProtocolError("the stream ended inside a frame")
            return None                      # the daemon closed the session
        data += chunk
    return data


def read_frame():
    """Returns (frame, body size), or (None, 0) at end of input."""
    prefix = read_exact(4)
    if prefix is None:
        return None, 0
    (length,) = struct.unpack(">I", prefix)
    if length == 0 or length > MAX_FRAME:    # refuse before reading the body
        raise ProtocolError(f"bad frame length {length}")
    body = read_exact(length)
    if body is None:
        raise ProtocolError("the stream ended inside a frame")
    frame = unpack(body)
    if not isinstance(frame, list) or not frame or type(frame[0]) is not int or frame[0] not in ARITY:
        raise ProtocolError("a frame must be an array starting with a known frame type")
    kind = frame[0]
    if len(frame) not in ARITY[kind]:
        raise ProtocolError(f"frame type {kind} with {len(frame)} fields")
    if kind in (OPEN, DATA, CLOSE, CREDIT, RESET) and not (type(frame[1]) is int and frame[1] >= 0):
        raise ProtocolError("field 1 must be a channel id")
    if kind == DATA and len(frame) == 4 and type(frame[3]) is not bool:
        raise ProtocolError("DATA fin must be a boolean")
    if kind in (OPEN, RESET) and type(frame[2]) is not str or kind == GOAWAY and type(frame[1]) is not str:
        raise ProtocolError("a label or reason must be a string")
    if kind == CREDIT and not (type(frame[2]) is int and frame[2] >= 0):
        raise ProtocolError("CREDIT bytes must be a non-negative integer")
    return frame, length


peer_max_frame = MAX_FRAME                   # until the daemon's HELLO says otherwise
peer_window = 0                              # the daemon's window: the starting credit of channels we send on


def write_frame(frame):
    body = pack(frame)
    if len(body) > peer_max_frame:
        raise ValueError(f"frame of {len(body)} bytes is over the daemon's max_frame")
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(OUT_FD, data):]


# ---- the plugin

def answer(request):
    """The application: the job "py.echo" returns its argument (see "Routing calls")."""
    body = request.get("body")
    if "forward-ends" in FAULTS and isinstance(body, dict) and any(True for _ in channel_refs(body)):
        return {"ok": body.get("payload")}
    if any(True for _ in channel_refs(body)):
        return {"error": {"code": "bad.request", "message": "echo cannot send back channel ends it received"}}
    if not isinstance(body, dict) or body.get("kind") != "job" or body.get("name") != "py.echo":
        return {"error": {"code": "unknown", "message": f"{NAME} serves only the job py.echo"}}
    return {"ok": body.get("payload")}


def main():
    global peer_max_frame, peer_window
    # The declaration: what plugboardd registers for us (see "The plugin declaration").
    declaration = {"name": NAME, "version": "1.0.0", "jobs": ["py.echo"], "hooks": [], "pipeline": [],
                   "requires": [], "calls": []}
    if "bad-declaration" in FAULTS:
        declaration["hooks"] = [{"event": "container.create", "phase": "sometimes"}]
    my_hello = [HELLO, {"protocol": 1, "name": NAME, "max_frame": MAX_FRAME, "window": WINDOW, "meta": declaration}]
    if "slow-hello" not in FAULTS:
        write_frame(my_hello)

    hello, _ = read_frame()
    if "slow-hello" in FAULTS:
        write_frame(my_hello)
    if hello is None:
        return
    if hello[0] == GOAWAY:
        print(f"{NAME}: the daemon refused the session: {hello[1]}", file=sys.stderr)
        return
    if hello[0] != HELLO or not isinstance(hello[1], dict):
        raise ProtocolError("the first frame must be HELLO")
    peer = hello[1]
    if type(peer.get("protocol")) is not int:
        raise ProtocolError('HELLO lacks an integer "protocol"')
    if peer["protocol"] != 1:
        write_frame([GOAWAY, f"peer speaks protocol {peer['protocol']}; this side speaks 1"])
        return
    max_frame, window = peer.get("max_frame"), peer.get("window")
    if type(max_frame) is not int or not 64 <= max_frame <= 0xffffffff or type(window) is not int or window < 1024:
        raise ProtocolError("HELLO max_frame or window out of range")
    peer_max_frame, peer_window = max_frame, window

    # Channels whose receiver we hold: id -> bytes consumed and not yet credited.
    inbound = {}
    highest_daemon_id = 0                     # for telling late frames from unknown channels
    next_id = 2                               # our own channel ids
    engine_channel = None
    reply_ends = set()                        # reply channels the daemon handed us

    while True:
        frame, size = read_frame()
        if frame is None:
            return
        kind = frame[0]
        if kind == OPEN:
            _, cid, label = frame
            if cid % 2 == 0 or cid in inbound:   # the daemon allocates odd ids
                raise ProtocolError(f"OPEN of channel {cid}, which is not a fresh daemon channel id")
            inbound[cid] = 0
            highest_daemon_id = max(highest_daemon_id, cid)
        elif kind == DATA:
            cid, message = frame[1], frame[2]
            fin = len(frame) == 4 and frame[3] is True
            if cid not in inbound and (cid % 2 == 0 and cid >= next_id or cid % 2 == 1 and cid > highest_daemon_id):
                raise ProtocolError(f"DATA on unknown channel {cid}")
            refs = list(channel_refs(message))
            for r in refs:
                if r.channel_id() % 2 == 0:
                    raise ProtocolError(f"channel reference {r.channel_id()} has an id only this side allocates")
                highest_daemon_id = max(highest_daemon_id, r.channel_id())
            if cid not in inbound:
                # A late message for a channel we closed: drop it, and close any ends it carried.
                for r in refs:
                    write_frame([CLOSE, r.channel_id()])
                continue
            reply = message.get("reply") if isinstance(message, dict) else None
            is_request = isinstance(reply, Ext) and reply.type == SENDER
            for r in refs:                    # ends we will not use are closed, as a dropped end would be
                if not (is_request and r is reply):
                    write_frame([CLOSE, r.channel_id()])
            if is_request and "ignore-window" in FAULTS:
                if engine_channel is None:
                    engine_channel, next_id = next_id, next_id + 2
                    write_frame([OPEN, engine_channel, "engine"])
                for _ in range(4):            # no look at the credit: the fault
                    r, next_id = next_id, next_id + 2
                    inbound[r] = 0
                    write_frame([DATA, engine_channel, {"body": {"job": "echo", "argument": b"x" * 700},
                                                        "reply": Ext(SENDER, r.to_bytes(8, "big"))}])
            if is_request:
                reply_ends.add(reply.channel_id())
                # A fresh reply channel starts with the daemon's whole window as credit: one
                # message always fits. fin=true sends it and closes the channel in one frame.
                result = answer(message)
                try:
                    write_frame([DATA, reply.channel_id(), result, True])
                except ValueError:            # over the daemon's max_frame: nothing was written
                    write_frame([DATA, reply.channel_id(),
                                 {"error": {"code": "too.large", "message": "the reply is over max_frame"}}, True])
            if fin:
                del inbound[cid]              # no credit after the last message
            else:
                inbound[cid] += size          # consumed: count it towards the next CREDIT
                if inbound[cid] >= WINDOW // 2 and "no-credit" not in FAULTS:
                    write_frame([CREDIT, cid, inbound[cid]])
                    inbound[cid] = 0
        elif kind in (CLOSE, RESET):
            if "die-on-close" in FAULTS and frame[1] in reply_ends:
                sys.exit(1)
            inbound.pop(frame[1], None)       # the daemon's sender is done (or aborted)
        elif kind == CREDIT:
            pass                              # we never send more than one message per channel
        elif kind == GOAWAY:
            print(f"{NAME}: daemon closed the session: {frame[1]}", file=sys.stderr)
            if "ignore-goaway" in FAULTS:
                while read_frame()[0] is not None:
                    pass
            return
        elif kind == HELLO:
            raise ProtocolError("a second HELLO")


if __name__ == "__main__":
    try:
        main()
    except ProtocolError as e:
        if "crash-on-bad-frame" in FAULTS:
            sys.exit(1)
        try:
            write_frame([GOAWAY, str(e)])
        except (OSError, ValueError):
            pass
        print(f"{NAME}: protocol error: {e}", file=sys.stderr)
        sys.exit(1)
