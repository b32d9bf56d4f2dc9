"""A real plugboardd per test (or per module), each with its own admin socket and state dir.

The binaries come from ``PLUGBOARD_BIN`` (the Makefile sets it) or ``swift build --show-bin-path``
in the repository. Python plugins find this SDK through ``PYTHONPATH`` (the source tree),
which plugboardd passes on to the plugins it starts.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import pytest

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(SDK))
PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
_bin_cache: List[str] = []


def bin_dir() -> str:
    """Where plugboardd and plugboard are built."""
    if not _bin_cache:
        path = os.environ.get("PLUGBOARD_BIN")
        if not path:
            path = subprocess.run(["swift", "build", "--show-bin-path"], cwd=REPO, check=True,
                                  capture_output=True, text=True).stdout.strip()
        for exe in ("plugboardd", "plugboard"):
            if not os.access(os.path.join(path, exe), os.X_OK):
                pytest.fail(f"{exe} is not built in {path}: run `swift build` (or set PLUGBOARD_BIN)")
        _bin_cache.append(path)
    return _bin_cache[0]


def plugin_command(script: str, *args: str) -> str:
    """The --plugin-exec command of a Python plugin script."""
    return " ".join([sys.executable, script, *args])


class Daemon:
    """A running plugboardd; its log lines are collected from stderr."""

    def __init__(self, args: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="pb-py-")
        self.socket = os.path.join(self.dir, "admin.sock")
        self.state = os.path.join(self.dir, "state")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = SDK + os.pathsep + environment.get("PYTHONPATH", "")
        environment["PYTHONUNBUFFERED"] = "1"
        environment.update(env or {})
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir(), "plugboardd"), "--admin-socket", self.socket, "--state-dir", self.state,
             "--shutdown-grace", "1", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.wait_log("plugboardd ready", 60):
            self.stop()
            pytest.fail("plugboardd did not get ready; its log:\n" + "\n".join(self.lines[-20:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, text: str, deadline: float = 10.0, start: int = 0) -> Optional[str]:
        """The first log line (from index ``start``) containing ``text``, waiting up to ``deadline`` s."""
        end = time.monotonic() + deadline
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if text in line:
                        return line
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(left)

    def log(self) -> str:
        """The log so far."""
        with self._cond:
            return "\n".join(self.lines)

    def cli(self, *args: str, input: Optional[bytes] = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs ``plugboard ARGS --socket SOCKET``; bytes out."""
        return subprocess.run([os.path.join(bin_dir(), "plugboard"), "--socket", self.socket, *args],
                              input=input, capture_output=True, timeout=timeout)

    def call(self, job: str, argument: Any = None, *extra: str) -> Any:
        """``plugboard call JOB JSON``: the result, parsed; fails the test on an error."""
        r = self.cli("call", job, json.dumps(argument), *extra)
        assert r.returncode == 0, f"plugboard call {job} failed: {r.stderr.decode()}\nlog:\n{self.log()[-3000:]}"
        return json.loads(r.stdout)

    def call_error(self, job: str, argument: Any = None) -> Dict[str, Any]:
        """``plugboard call JOB JSON --format json`` that must fail: its error as JSON."""
        r = self.cli("call", job, json.dumps(argument), "--format", "json")
        assert r.returncode != 0, f"plugboard call {job} succeeded: {r.stdout.decode()}"
        text = (r.stdout or r.stderr).decode()
        try:
            return json.loads(text)
        except ValueError:
            return {"text": text + r.stderr.decode()}

    def wait_active(self, name: str, deadline: float = 20.0) -> Dict[str, Any]:
        """Waits until plugin ``name`` is active (polling ``plugin inspect``)."""
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            r = self.cli("plugin", "inspect", name, "--format", "json")
            if r.returncode == 0:
                last = json.loads(r.stdout)
                if last.get("state") == "active":
                    return last
            time.sleep(0.05)
        pytest.fail(f"plugin {name} not active after {deadline} s: {last}\nlog:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; removes its directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def daemon_factory():
    """Starts daemons; stops every one at the end of the test."""
    started: List[Daemon] = []

    def start(*args: str, env: Optional[Dict[str, str]] = None) -> Daemon:
        d = Daemon(args, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def tmpdir_short():
    """A short temporary directory (unix socket paths are limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="pb-")
    yield d
    shutil.rmtree(d, ignore_errors=True)
