"""The SDK's wire, frame by frame, against a scripted daemon side (tests/peer.py): the
declaration, every msgpack type, flow control both ways, GOAWAY, violations; and the
connect-in mode (unix socket, TCP with mutual TLS, reconnecting), which plugboardd of this
branch does not serve yet, so a Python listener plays the daemon."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import msgpack
import pytest

from conftest import PLUGINS, SDK
from peer import CLOSE, CREDIT, DATA, GOAWAY, HELLO, OPEN, Peer, ref

SINK = os.path.join(PLUGINS, "sink.py")


def plugin_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SDK
    env.pop("PLUGBOARD_CONNECT", None)
    env.update(extra)
    return env


def spawn_on_fds(script: str = SINK, **env: str):
    """Starts a plugin as plugboardd does: its session on fds 3 (reads) and 4 (writes)."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()
    # Out of the way of 3 and 4 before they are placed there.
    moved = []
    for i, fd in enumerate((r3, w3, r4, w4)):
        os.dup2(fd, 40 + i, inheritable=False)
        os.close(fd)
        moved.append(40 + i)
    r3, w3, r4, w4 = moved

    def place() -> None:
        os.dup2(r3, 3)
        os.dup2(w4, 4)

    proc = subprocess.Popen([sys.executable, script], preexec_fn=place, close_fds=False,
                            env=plugin_env(PLUGBOARD_PROTOCOL="plugboard-chan/1", PLUGBOARD_PLUGIN_NAME="sink", **env),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for fd in (r3, w4):
        os.close(fd)
    return proc, Peer(read_fd=r4, write_fd=w3)


@pytest.fixture
def plugin():
    proc, peer = spawn_on_fds()
    yield proc, peer
    peer.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def opened(peer: Peer) -> int:
    calls = peer.new_id()
    peer.send([OPEN, calls, "calls"])
    return calls


def test_declaration_in_hello(plugin):
    _, peer = plugin
    hello = peer.handshake()
    assert hello["protocol"] == 1 and hello["name"] == "sink"
    assert hello["max_frame"] == 16 * 1024 * 1024 and hello["window"] == 262144
    meta = hello["meta"]
    assert meta["name"] == "sink" and meta["version"] == "2.0"
    assert "py.greet" in meta["jobs"]
    assert {"event": "py.widget.create", "phase": "validate", "priority": 0, "timeout_ms": 2000,
            "policy": "required", "overrides": False} in meta["hooks"]
    assert {"type": "py.note", "priority": 5, "timeout_ms": 10000, "policy": "required"} in meta["pipeline"]
    assert {"point": "py.widget", "priority": 7} in meta["provides"]
    assert set(meta["calls"]) == {"echo", "py.widget", "hooks.run:py.widget.create", "pipeline.send:py.note"}


def test_every_msgpack_type_echoed(plugin):
    _, peer = plugin
    peer.handshake()
    calls = opened(peer)
    value = [None, True, False, 0, 127, 128, -1, -33, 2 ** 32, 2 ** 64 - 1, -2 ** 63, 1.5, "", "é" * 40,
             b"\x00\xff" * 100, [], {}, {"nested": [[[1]]]}, {1: "int key"}, msgpack.ExtType(7, b"abc"),
             "x" * 70000, list(range(20))]
    answer = peer.invoke(calls, "job", "py.async-echo", value)
    assert answer == {"ok": value}


def test_hooks_mutate_veto_and_pipeline(plugin):
    _, peer = plugin
    peer.handshake()
    calls = opened(peer)
    assert peer.invoke(calls, "hook", "py.widget.create", {"a": 1}, {"phase": "mutate", "object": "w9"}) == \
        {"ok": {"payload": {"a": 1, "color": "red", "object": "w9"}}}
    assert peer.invoke(calls, "hook", "py.widget.create", {"bad": 1}, {"phase": "validate", "object": "w9"}) == \
        {"ok": {"veto": "bad widgets are refused"}}
    assert peer.invoke(calls, "hook", "py.widget.create", {}, {"phase": "validate", "object": "w9"}) == {"ok": {"ok": True}}
    assert peer.invoke(calls, "pipeline", "py.note", "hi") == {"ok": [{"type": "py.note.seen", "body": {"text": "HI"}}]}
    unknown = peer.invoke(calls, "job", "py.nothing", None)
    assert unknown["error"]["code"] == "routing.unknown-job"


def test_grants_credit_as_it_consumes(plugin):
    _, peer = plugin
    peer.handshake()
    calls = opened(peer)
    # 40 requests of ~20 KB: 800 KB on one channel, three windows; the plugin must grant
    # credit (in window/2 steps), or a real daemon would stop sending.
    sent = 0
    replies = []
    for i in range(40):
        reply = peer.new_id()
        replies.append(reply)
        sent += peer.send([DATA, calls, {"body": {"kind": "job", "name": "py.async-echo", "payload": "x" * 20000},
                                         "reply": ref(0x50, reply)}])
    credited = 0
    answered = set()
    while len(answered) < 40 or credited < sent - 131072:
        f = peer.recv()
        if f[0] == CREDIT and f[1] == calls:
            credited += f[2]
        elif f[0] == DATA and f[1] in replies:
            assert f[2] == {"ok": "x" * 20000} and f[3] is True
            answered.add(f[1])
    assert credited >= 131072 and credited <= sent


def test_respects_the_daemon_window(plugin):
    _, peer = plugin
    peer.handshake()
    calls = opened(peer)
    answer = peer.invoke(calls, "job", "py.bytes", 1024 * 1024)
    stream = answer["ok"]
    assert isinstance(stream, msgpack.ExtType) and stream.code == 0x52
    sid = int.from_bytes(stream.data, "big")
    got = 0
    # Without CREDIT the plugin may send its window (262144) plus one frame at most.
    with pytest.raises(TimeoutError):
        os.set_blocking(peer.read_fd, True)
        import select
        while True:
            ready, _, _ = select.select([peer.read_fd], [], [], 0.5)
            if not ready:
                raise TimeoutError
            f = peer.recv()
            if f[0] == DATA and f[1] == sid:
                got += len(msgpack.packb(f, use_bin_type=True))
    assert 262144 <= got <= 262144 + 65536 + 64, got
    total = got
    data_bytes = 0
    peer.send([CREDIT, sid, 1 << 40])
    while True:
        f = peer.recv()
        if f[0] == CLOSE and f[1] == sid:
            break
        if f[0] == DATA and f[1] == sid:
            data_bytes += len(f[2])
    assert data_bytes > 0 and total > 0


def test_goaway_ends_it_with_status_0(plugin):
    proc, peer = plugin
    peer.handshake()
    opened(peer)
    peer.send([GOAWAY, "plugboardd is shutting down"])
    assert proc.wait(5) == 0
    err = proc.stderr.read().decode()
    assert "session ended: GOAWAY from plugboardd: plugboardd is shutting down" in err
    assert "sink: on_stop ran" in err


def test_end_of_file_ends_it(plugin):
    proc, peer = plugin
    peer.handshake()
    os.close(peer.write_fd)
    peer.write_fd = None
    assert proc.wait(5) == 0


def test_violation_goaway_and_status_1(plugin):
    proc, peer = plugin
    peer.handshake()
    peer.send([DATA, 1001, "nobody opened this"])
    f = peer.recv()
    assert f[0] == GOAWAY and "DATA on unknown channel 1001" in f[1]
    assert proc.wait(5) == 1


def test_oversized_frame_refused(plugin):
    proc, peer = plugin
    peer.handshake()
    os.write(peer.write_fd, (64 * 1024 * 1024).to_bytes(4, "big"))
    f = peer.recv()
    assert f[0] == GOAWAY and "bad frame length" in f[1]
    assert proc.wait(5) == 1


def test_unused_channel_ends_are_closed(plugin):
    _, peer = plugin
    peer.handshake()
    calls = opened(peer)
    stray = peer.new_id()
    answer = peer.invoke(calls, "job", "py.greet", {"end": ref(0x51, stray)})
    assert answer["ok"].startswith("hello, ")
    peer.recv_until(lambda f: f[0] == CLOSE and f[1] == stray)


# ---- connecting in

def unix_listener(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    s.settimeout(20)
    return s


def spawn_connecting(**env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SINK], env=plugin_env(**env), stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def test_connect_unix_and_reconnect(tmpdir_short):
    path = os.path.join(tmpdir_short, "plugins.sock")
    listener = unix_listener(path)
    proc = spawn_connecting(PLUGBOARD_CONNECT="unix:" + path)
    try:
        conn, _ = listener.accept()
        peer = Peer(sock=conn)
        hello = peer.handshake()
        assert hello["name"] == "sink" and "py.greet" in hello["meta"]["jobs"]
        calls = opened(peer)
        assert peer.invoke(calls, "job", "py.greet", "unix") == {"ok": "hello, unix"}
        conn.close()                        # the daemon went away: the plugin comes back, declared again
        conn2, _ = listener.accept()
        peer2 = Peer(sock=conn2)
        hello2 = peer2.handshake()
        assert hello2["meta"] == hello["meta"]
        calls2 = opened(peer2)
        assert peer2.invoke(calls2, "job", "py.greet", "again") == {"ok": "hello, again"}
        conn2.close()
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def make_certificates(d: str) -> dict:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test-ca")
    for who, san in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "subjectAltName=DNS:sink")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        with open(os.path.join(d, f"{who}.ext"), "w") as f:
            f.write(san + "\n")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext")
    return {k: os.path.join(d, k) for k in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_connect_tcp_mutual_tls(tmpdir_short):
    c = make_certificates(tmpdir_short)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(c["server.pem"], c["server.key"])
    server_ctx.load_verify_locations(c["ca.pem"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED         # mutual: the plugin must show a certificate
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(20)
    port = listener.getsockname()[1]
    proc = spawn_connecting(PLUGBOARD_CONNECT=f"tcp://127.0.0.1:{port}", PLUGBOARD_TLS_CERT=c["client.pem"],
                            PLUGBOARD_TLS_KEY=c["client.key"], PLUGBOARD_TLS_CA=c["ca.pem"])
    try:
        raw, _ = listener.accept()
        conn = server_ctx.wrap_socket(raw, server_side=True)
        assert conn.getpeercert()["subject"] == ((("commonName", "client"),),)
        peer = Peer(sock=conn)
        assert peer.handshake()["name"] == "sink"
        calls = opened(peer)
        assert peer.invoke(calls, "job", "py.greet", "tls") == {"ok": "hello, tls"}
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def test_connect_tcp_without_tls_is_refused():
    proc = spawn_connecting(PLUGBOARD_CONNECT="tcp://127.0.0.1:9")
    assert proc.wait(30) == 2
    err = proc.stderr.read().decode()
    assert "mutual TLS" in err and "PLUGBOARD_TLS_CERT" in err


def test_connect_sigterm_ends_it_without_reconnecting(tmpdir_short):
    """SIGTERM to a plugin that connected in: GOAWAY on its session, exit 0, and no new
    connection; SIGTERM while it waits to connect again: exit 0 at once."""
    path = os.path.join(tmpdir_short, "plugins.sock")
    listener = unix_listener(path)
    proc = spawn_connecting(PLUGBOARD_CONNECT="unix:" + path)
    try:
        conn, _ = listener.accept()
        conn.settimeout(20)                 # a plugin that ignores SIGTERM fails here, not hangs
        peer = Peer(sock=conn)
        peer.handshake()
        proc.send_signal(signal.SIGTERM)
        goaway = peer.recv_until(lambda f: f[0] == GOAWAY)
        assert "SIGTERM" in goaway[1]
        assert proc.wait(timeout=20) == 0
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):  # it did not connect again
            listener.accept()
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        listener.close()
    # Nobody listens: it is in its backoff when SIGTERM comes.
    os.unlink(path)
    proc = spawn_connecting(PLUGBOARD_CONNECT="unix:" + path)
    try:
        for line in proc.stderr:
            if b"again in" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
