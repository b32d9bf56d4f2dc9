"""A minimal daemon side of the wire, for tests that need to control every frame (or to
listen for plugins that connect in, which plugboardd of this branch does not do yet)."""
from __future__ import annotations

import os
import socket
import struct
from typing import Any, List, Optional

import msgpack

HELLO, OPEN, DATA, CLOSE, CREDIT, RESET, GOAWAY = range(7)
DAEMON_HELLO = [HELLO, {"protocol": 1, "name": "plugboardd", "max_frame": 1 << 20, "window": 262144, "meta": {}}]


def ref(kind: int, cid: int) -> msgpack.ExtType:
    """A channel end on the wire."""
    return msgpack.ExtType(kind, cid.to_bytes(8, "big"))


class Peer:
    """The daemon's end of one session: frames in and out, over a socket or a pair of fds."""

    def __init__(self, sock: Optional[socket.socket] = None, read_fd: Optional[int] = None,
                 write_fd: Optional[int] = None) -> None:
        self.sock = sock
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.next_id = 1

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data)) if self.sock else os.read(self.read_fd, n - len(data))
            if not chunk:
                raise EOFError(f"end of file after {len(data)} of {n} bytes")
            data += chunk
        return data

    def recv(self) -> List[Any]:
        """The next frame, decoded."""
        (n,) = struct.unpack(">I", self._read(4))
        return msgpack.unpackb(self._read(n), raw=False, strict_map_key=False)

    def recv_until(self, predicate, limit: int = 10000) -> List[Any]:
        """Frames until one matches; returns that one."""
        for _ in range(limit):
            f = self.recv()
            if predicate(f):
                return f
        raise AssertionError("no matching frame")

    def send(self, frame: List[Any]) -> int:
        """Sends one frame; returns its body size."""
        body = msgpack.packb(frame, use_bin_type=True)
        data = struct.pack(">I", len(body)) + body
        if self.sock:
            self.sock.sendall(data)
        else:
            while data:
                data = data[os.write(self.write_fd, data):]
        return len(body)

    def new_id(self) -> int:
        cid = self.next_id
        self.next_id += 2
        return cid

    def handshake(self) -> dict:
        """Sends the daemon's HELLO, reads the plugin's; returns its map."""
        self.send(DAEMON_HELLO)
        hello = self.recv()
        assert hello[0] == HELLO, hello
        return hello[1]

    def invoke(self, calls: int, kind: str, name: str, payload: Any, extra: Optional[dict] = None) -> Any:
        """Sends an invocation on channel ``calls`` and returns the reply map."""
        reply = self.new_id()
        body = {"kind": kind, "name": name, "payload": payload}
        if extra is not None:
            body["extra"] = extra
        self.send([DATA, calls, {"body": body, "reply": ref(0x50, reply)}])
        f = self.recv_until(lambda f: f[0] == DATA and f[1] == reply)
        assert len(f) == 4 and f[3] is True, f
        return f[2]

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        for fd in (self.read_fd, self.write_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
