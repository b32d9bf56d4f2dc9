"""The SDK against a real plugboardd: one daemon with the `sink` plugin for most tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import PLUGINS, Daemon, bin_dir, plugin_command

SINK = os.path.join(PLUGINS, "sink.py")


@pytest.fixture(scope="module")
def daemon():
    """plugboardd with echo built in and the sink plugin (Python SDK) on fds 3/4."""
    d = Daemon(["--plugin", "echo", "--plugin-exec", "sink=" + plugin_command(SINK)])
    try:
        d.wait_active("sink")
        yield d
    finally:
        d.stop()


def test_declaration_registers_everything(daemon):
    info = daemon.wait_active("sink")
    text = json.dumps(info)
    for name in ("py.greet", "py.upper", "py.events", "py.state"):
        assert name in text
    hooks = daemon.cli("hooks", "--format", "json")
    assert hooks.returncode == 0
    listed = json.loads(hooks.stdout)
    mine = [h for h in listed if h.get("owner") == "sink"]
    assert {(h.get("event"), h.get("phase")) for h in mine} >= {("py.widget.create", "mutate"),
                                                                 ("py.widget.create", "validate")}


def test_job_sync_and_async(daemon):
    assert daemon.call("py.greet", "you") == "hello, you"
    value = {"a": [1, 2.5, None, True, "x"], "n": -7}
    assert daemon.call("py.async-echo", value) == value
    synced = daemon.call("py.sync-echo", "v")
    assert synced == {"value": "v", "thread": True}       # a sync handler runs in a worker thread


def test_job_error_codes_reach_the_caller(daemon):
    err = daemon.call_error("py.fail", "it")
    assert "py.nope" in json.dumps(err) and "refused it" in json.dumps(err)
    err = daemon.call_error("py.crash")
    assert "plugin.error" in json.dumps(err) and "ZeroDivisionError" in json.dumps(err)


def test_reply_over_the_daemon_max_frame_fails_cleanly(daemon):
    err = json.dumps(daemon.call_error("py.huge"))
    assert "reply.unsendable" in err and "byte stream" in err, err
    assert daemon.call("py.greet", "after") == "hello, after"       # the session goes on


def test_context_caller_is_none_for_the_operator(daemon):
    who = daemon.call("py.whoami")
    assert who == {"caller": None, "name": "sink", "restarts": 0}


def test_engine_call_with_grant_sync_and_async(daemon):
    assert daemon.call("py.call-echo", {"hi": 1}) == {"hi": 1}
    assert daemon.call("py.call-echo-async", "there") == "there"


def test_engine_call_without_grant_is_denied(daemon):
    err = json.dumps(daemon.call_error("py.call-denied", 1))
    assert "permission.denied" in err, err


def test_hook_chain_mutate_and_validate(daemon):
    outcome = daemon.call("py.run-chain", {"size": 3})
    assert outcome["payload"] == {"size": 3, "color": "red", "object": "w1"}
    assert outcome["attribution"].get("color") == "sink"
    err = json.dumps(daemon.call_error("py.run-chain", {"bad": True}))
    assert "bad widgets are refused" in err and "routing" in err


def test_pipeline_handler(daemon):
    r = daemon.cli("pipeline", "send", "py.note", json.dumps("hello"), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    run = json.loads(r.stdout)
    assert {"type": "py.note.seen", "body": {"text": "HELLO"}} in run["final"], run
    # And from the plugin itself, through the engine (pipeline.send grant).
    run = daemon.call("py.send-note", "again")
    assert {"type": "py.note.seen", "body": {"text": "AGAIN"}} in run["final"], run


def test_provider(daemon):
    r = daemon.cli("call", "--best", "py.widget", json.dumps({"k": 1}))
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout) == {"provided": {"k": 1}}
    assert daemon.call("py.best", 5) == {"provided": 5}


def test_byte_streams_both_ways(daemon):
    r = daemon.cli("call", "py.upper", "{}", "--stdin", input=b"hello, stream\n" * 1000)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"HELLO, STREAM\n" * 1000
    r = daemon.cli("call", "py.upper-sync", "--stdin", input=b"abc")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"ABC"


def test_received_stream_handed_back_is_bridged(daemon):
    data = os.urandom(600 * 1024)
    r = daemon.cli("call", "py.hand-back", "{}", "--stdin", input=data)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data


def test_byte_stream_over_many_windows(daemon):
    n = 3 * 1024 * 1024 + 123               # 12 windows of 256 KiB: credit must flow
    r = daemon.cli("call", "py.bytes", str(n))
    assert r.returncode == 0, r.stderr.decode()
    block = bytes(range(256)) * 256
    assert len(r.stdout) == n
    assert r.stdout[:len(block)] == block and r.stdout[-123:] == block[:123]


def test_large_upload_with_flow_control(daemon):
    data = os.urandom(2 * 1024 * 1024)
    r = daemon.cli("call", "py.upper-sync", "--stdin", input=data)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == data.upper()


def test_events_subscribe_and_publish(daemon):
    got = daemon.call("py.events", 42)
    assert got == {"type": "py.test.ping", "n": 42, "source": "sink"}
    assert daemon.call("py.events-sync", 1) == "py.sync.ping"


def test_state_get_put(daemon):
    got = daemon.call("py.state", {"key": "k1", "value": {"x": [1, 2]}})
    assert got == {"before": "absent", "after": {"x": [1, 2]}, "version": 1}
    got = daemon.call("py.state", {"key": "k1", "value": "two"})
    assert got == {"before": {"x": [1, 2]}, "after": "two", "version": 2}
    assert daemon.call("py.state-async", {"key": "k2", "value": 7}) == 7
    listed = daemon.call("state.list", {"namespace": "sink"})
    assert [(e["key"], e["value"]) for e in listed] == [("k1", "two"), ("k2", 7)]


def test_many_calls_in_flight(daemon):
    procs = [subprocess.Popen([os.path.join(bin_dir(), "plugboard"), "call", "py.async-echo", str(i),
                               "--socket", daemon.socket], stdout=subprocess.PIPE) for i in range(16)]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    assert [json.loads(o) for o in outs] == list(range(16))


def test_goaway_and_clean_exit_on_plugin_rm(daemon_factory, tmpdir_short):
    marker = os.path.join(tmpdir_short, "stopped")
    d = daemon_factory("--plugin", "echo", env={"SINK_STOP_MARKER": marker})
    r = d.cli("plugin", "add", "gone", "--exec", plugin_command(SINK))
    assert r.returncode == 0, r.stderr.decode()
    info = d.wait_active("gone")
    pid = info.get("pid")
    assert d.call("py.greet", "x") == "hello, x"
    start = len(d.lines)
    r = d.cli("plugin", "rm", "gone")
    assert r.returncode == 0, r.stderr.decode()
    # The plugin heard GOAWAY, ran its on_stop and exited.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.path.exists(marker):
        time.sleep(0.02)
    # GOAWAY first, not SIGTERM (the supervisor used to SIGTERM a plugin as soon as the
    # daemon closed its session, before the GOAWAY reached it).
    said = open(marker).read()
    assert said == "stopped: GOAWAY from plugboardd: closed locally: plugboardd is shutting down", said
    assert pid
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}")


def test_started_by_hand_explains(tmpdir_short):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(PLUGINS.rstrip("/")).rsplit("/tests", 1)[0]
    env.pop("PLUGBOARD_PROTOCOL", None)
    env.pop("PLUGBOARD_CONNECT", None)
    r = subprocess.run([sys.executable, SINK], env=env, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "sink.py is a Plugboard plugin: it talks to plugboardd over file descriptors 3 and 4" in r.stderr
    assert "so it does nothing when started by hand. Run it under the daemon:" in r.stderr
    assert f'plugboardd --plugin-exec "NAME=' in r.stderr and SINK in r.stderr
