"""Plugins: the declaration, the handlers, the engine calls, and serve()."""
from __future__ import annotations

import asyncio
import inspect
import os
import random
import signal
import socket
import ssl
import stat
import sys
import threading
from typing import (Any, AsyncIterable, Awaitable, Callable, Dict, Iterable, List, NoReturn, Optional,
                    Sequence, Set, Tuple, TypeVar, Union)

from ._session import (ByteStreamReader, ByteStreamWriter, ChannelClosed, PeerGone, ProtocolError, Receiver,
                       RemoteError, Request, Sender, Session, run_in_loop)

__all__ = ["Plugin", "Context", "Engine", "Events", "State", "Veto", "PluginError", "Message", "serve",
           "serve_async", "PROTOCOL_NAME"]

#: The protocol the daemon passes in ``PLUGBOARD_PROTOCOL``.
PROTOCOL_NAME = "plugboard-chan/1"

F = TypeVar("F", bound=Callable[..., Any])
PHASES = ("mutate", "validate", "observe")
POLICIES = ("required", "optional")


class PluginError(Exception):
    """An error with a code of the plugin's own, which reaches its caller unchanged.

    ``raise PluginError("volume.not-found", "no volume data")``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Veto(Exception):
    """Refuses the operation a hook was asked about: ``raise Veto("reason")`` (or return it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Message:
    """A pipeline message a handler routes on: ``Message("log.line", body)`` (a ``(type, body)`` tuple works too)."""

    __slots__ = ("type", "body")

    def __init__(self, type: str, body: Any) -> None:
        self.type = type
        self.body = body

    def __repr__(self) -> str:
        return f"Message({self.type!r}, {self.body!r})"


def _ms(seconds: float) -> int:
    return max(0, min(int(round(seconds * 1000)), 86_400_000))


class _Handler:
    """A registered function: sync (run in a worker thread) or async (on the loop), taking ctx or not."""

    def __init__(self, fn: Callable[..., Any], arity: int) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        try:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            has_varargs = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values())
            self.takes_ctx = has_varargs or len(params) > arity
        except (TypeError, ValueError):
            self.takes_ctx = True

    async def __call__(self, ctx: "Context", *args: Any) -> Any:
        call_args = args + (ctx,) if self.takes_ctx else args
        if self.is_async:
            result = await self.fn(*call_args)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(None, lambda: self.fn(*call_args))
        if inspect.isawaitable(result):
            result = await result
        return result


class Plugin:
    """A plugin: its name, version, and what it serves (jobs, hooks, pipeline types, extension points).

    >>> plugin = Plugin("greeter", version="1.0")
    >>> @plugin.job("greet")
    ... def greet(arg): return f"hello, {arg}"

    Handlers may be plain functions (run in a worker thread, so they may block) or
    ``async def`` (run on the session's asyncio loop). A handler that names one more
    parameter than its payload gets the :class:`Context` too.
    """

    def __init__(self, name: str, version: str = "0.0.0", *, requires: Sequence[str] = (),
                 calls: Sequence[str] = (), hook_privileges: Sequence[str] = ()) -> None:
        self.name = name
        self.version = version
        #: Jobs that must be active before this plugin is (boot order).
        self.requires: List[str] = list(requires)
        #: Jobs (and grants: ``state:OTHER``, ``hooks.run:EVENT``, ``pipeline.send:TYPE``, points) it calls.
        self.calls: List[str] = list(calls)
        #: What its container.create hooks change that needs a grant (``mount=/srv/data``, ``command``).
        self.hook_privileges: List[str] = list(hook_privileges)
        self._jobs: Dict[str, Tuple[_Handler, Optional[float]]] = {}
        self._hooks: List[Tuple[Dict[str, Any], _Handler]] = []
        self._messages: Dict[str, Tuple[Dict[str, Any], _Handler]] = {}
        self._providers: Dict[str, Tuple[int, _Handler]] = {}
        self._on_start: List[_Handler] = []
        self._on_stop: List[_Handler] = []

    # -- registrations

    def job(self, name: str, *, timeout: Optional[float] = None) -> Callable[[F], F]:
        """Serves the job ``name``: ``handler(argument[, ctx]) -> result``.

        ``timeout`` (seconds): how long a call may take when its caller sets no deadline.
        """
        def register(fn: F) -> F:
            if name in self._jobs:
                raise ValueError(f"job {name} is declared twice")
            self._jobs[name] = (_Handler(fn, 1), timeout)
            return fn
        return register

    def hook(self, event: str, *, phase: str = "mutate", priority: int = 0, timeout: float = 2.0,
             policy: str = "required", overrides: bool = False) -> Callable[[F], F]:
        """Receives the lifecycle event ``event``: ``handler(payload[, ctx])``.

        ``phase="mutate"`` (the default) returns the new payload (None: the payload it was
        given, changed in place); ``"validate"`` returns anything to accept; ``"observe"`` is
        told what happened. Any phase refuses with ``raise Veto(reason)``. Higher
        ``priority`` runs first; ``policy="optional"`` makes a failure skip the hook instead
        of failing the operation; ``timeout`` is in seconds.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be required or optional, not {policy!r}")

        def register(fn: F) -> F:
            if any(o["event"] == event and o["phase"] == phase for o, _ in self._hooks):
                raise ValueError(f"a {phase} hook for {event} is declared twice")
            options = {"event": event, "phase": phase, "priority": int(priority), "timeout_ms": _ms(timeout),
                       "policy": policy, "overrides": bool(overrides)}
            self._hooks.append((options, _Handler(fn, 1)))
            return fn
        return register

    def messages(self, type: str, *, priority: int = 0, timeout: float = 10.0,
                 policy: str = "required") -> Callable[[F], F]:
        """Handles pipeline messages of ``type``: ``handler(body[, ctx])`` returns the messages to
        route on — a list of :class:`Message` or ``(type, body)`` tuples; None or ``[]`` consumes it.
        """
        if policy not in POLICIES:
            raise ValueError(f"policy must be required or optional, not {policy!r}")

        def register(fn: F) -> F:
            self._messages[type] = ({"type": type, "priority": int(priority), "timeout_ms": _ms(timeout),
                                     "policy": policy}, _Handler(fn, 1))
            return fn
        return register

    #: Another name for :meth:`messages`.
    pipeline = messages

    def provide(self, point: str, *, priority: int = 0) -> Callable[[F], F]:
        """Provides the extension point ``point`` at ``priority`` (higher is better):
        ``handler(argument[, ctx]) -> result``, called like a job."""
        def register(fn: F) -> F:
            self._providers[point] = (int(priority), _Handler(fn, 1))
            return fn
        return register

    def on_start(self, fn: F) -> F:
        """Runs ``fn([ctx])`` once the session is up, before the first call is answered."""
        self._on_start.append(_Handler(fn, 0))
        return fn

    def on_stop(self, fn: F) -> F:
        """Runs ``fn([ctx])`` when the session ends (GOAWAY from the daemon, or end of file)."""
        self._on_stop.append(_Handler(fn, 0))
        return fn

    def runs_hooks(self, event: str) -> None:
        """Declares that this plugin runs the hook chain of ``event`` (``ctx.engine.run_hooks``)."""
        self._add_call("hooks.run:" + event)

    def sends_messages(self, type: str) -> None:
        """Declares that this plugin sends messages of ``type`` into the pipeline (``ctx.engine.send``)."""
        self._add_call("pipeline.send:" + type)

    def _add_call(self, grant: str) -> None:
        if grant not in self.calls:
            self.calls.append(grant)

    # -- the wire

    def declaration(self) -> Dict[str, Any]:
        """The declaration sent in HELLO's ``meta`` (docs/PROTOCOL.md, "The plugin declaration")."""
        return {
            "name": self.name,
            "version": self.version,
            "jobs": list(self._jobs),
            "hooks": [dict(o) for o, _ in self._hooks],
            "pipeline": [dict(o) for o, _ in self._messages.values()],
            "provides": [{"point": p, "priority": pr} for p, (pr, _) in self._providers.items()],
            "requires": list(self.requires),
            "calls": list(self.calls),
            "hook_privileges": list(self.hook_privileges),
            "job_timeouts": {n: _ms(t) for n, (_, t) in self._jobs.items() if t is not None},
        }

    async def answer(self, invocation: Any, ctx: "Context") -> Any:
        """Answers one invocation ``{"kind", "name", "payload", "extra"}``; returns the ``ok`` value."""
        if not isinstance(invocation, dict) or not isinstance(invocation.get("name"), str):
            raise PluginError("bad.request", "an invocation must be a map with kind, name and payload")
        kind, name, payload = invocation.get("kind"), invocation["name"], invocation.get("payload")
        if kind == "job":
            entry = self._jobs.get(name)
            handler = entry[0] if entry else (self._providers[name][1] if name in self._providers else None)
            if handler is None:
                raise PluginError("routing.unknown-job", f"plugin {self.name} has no job {name}")
            return await handler(ctx, payload)
        if kind == "hook":
            phase = ctx.phase or "mutate"
            found = next((h for o, h in self._hooks if o["event"] == name and o["phase"] == phase), None)
            if found is None:
                raise PluginError("routing.unknown-job", f"plugin {self.name} has no {phase} hook for {name}")
            try:
                result = await found(ctx, payload)
            except Veto as v:
                return {"veto": v.reason}
            if isinstance(result, Veto):
                return {"veto": result.reason}
            if phase == "mutate":
                return {"payload": payload if result is None else result}
            return {"ok": True}
        if kind == "pipeline":
            entry2 = self._messages.get(name)
            if entry2 is None:
                raise PluginError("routing.unknown-job", f"plugin {self.name} does not handle {name} messages")
            out = await entry2[1](ctx, payload)
            return [_message_wire(m) for m in (out or [])]
        raise PluginError("bad.request", f"unknown invocation kind {kind!r}")


def _message_wire(m: Any) -> Dict[str, Any]:
    if isinstance(m, Message):
        return {"type": m.type, "body": m.body}
    if isinstance(m, tuple) and len(m) == 2:
        return {"type": m[0], "body": m[1]}
    if isinstance(m, dict) and "type" in m:
        return {"type": m["type"], "body": m.get("body")}
    raise TypeError(f"a pipeline handler returns Message(type, body) or (type, body) items, not {m!r:.100}")


# ---- what a handler can reach

class Events:
    """The events service: ``publish`` and ``subscribe`` (docs/SERVICES.md)."""

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine

    def publish(self, type: str, attributes: Optional[Dict[str, Any]] = None) -> Any:
        """Publishes the event ``type`` with ``attributes`` (engine prefixes are refused)."""
        arg: Dict[str, Any] = {"type": type}
        if attributes:
            arg["attributes"] = attributes
        return self._engine.call("events.publish", arg)

    def subscribe(self, types: Optional[Sequence[str]] = None, attributes: Optional[Dict[str, Any]] = None,
                  buffer: Optional[int] = None, since_seq: Optional[int] = None) -> Any:
        """Subscribes: returns a :class:`Receiver` of event maps (``async for event in sub``, or
        ``for event in sub`` in a synchronous handler); ``close()`` it to stop."""
        return run_in_loop(self._engine._session, self._subscribe, types, attributes, buffer, since_seq)

    async def _subscribe(self, types: Optional[Sequence[str]], attributes: Optional[Dict[str, Any]],
                         buffer: Optional[int], since_seq: Optional[int]) -> Receiver:
        tx, rx = self._engine._session.pipe()
        arg: Dict[str, Any] = {"sink": tx}
        if types:
            arg["types"] = list(types)
        if attributes:
            arg["attributes"] = attributes
        if buffer is not None:
            arg["buffer"] = buffer
        if since_seq is not None:
            arg["since_seq"] = since_seq
        del tx
        await self._engine._call("events.subscribe", arg, 10.0)
        return rx


class State:
    """The state service: this plugin's key/value namespace (docs/SERVICES.md)."""

    def __init__(self, engine: "Engine", namespace: Optional[str] = None) -> None:
        self._engine = engine
        self._namespace = namespace

    def namespace(self, name: str) -> "State":
        """Another plugin's namespace (needs the grant ``state:NAME``)."""
        return State(self._engine, name)

    def _arg(self, **kw: Any) -> Dict[str, Any]:
        arg = {k: v for k, v in kw.items() if v is not None}
        if self._namespace is not None:
            arg["namespace"] = self._namespace
        return arg

    def entry(self, key: str) -> Any:
        """``{"key", "value", "version", "found"}`` (version 0 when absent)."""
        return self._engine.call("state.get", self._arg(key=key))

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        return run_in_loop(self._engine._session, self._get, key, default)

    async def _get(self, key: str, default: Any) -> Any:
        e = await self._engine._call("state.get", self._arg(key=key), 10.0)
        return e.get("value") if isinstance(e, dict) and e.get("found") else default

    def put(self, key: str, value: Any, version: Optional[int] = None) -> Any:
        """Stores ``value``; returns ``{"key", "version"}``. With ``version``: compare-and-set (0: only if absent)."""
        arg = self._arg(key=key, version=version)
        arg["value"] = value
        return self._engine.call("state.put", arg)

    def delete(self, key: str, version: Optional[int] = None) -> Any:
        """Deletes ``key``; returns ``{"key", "deleted"}``."""
        return self._engine.call("state.delete", self._arg(key=key, version=version))

    def list(self, prefix: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None) -> Any:
        """``[{"key", "value", "version"}]`` in key order."""
        return self._engine.call("state.list", self._arg(prefix=prefix, after=after, limit=limit))


class Engine:
    """Calls into the engine with this plugin's grants, on its ``"engine"`` channel.

    Every method is a coroutine when called on the session's loop (an ``async def``
    handler: ``await ctx.engine.call(...)``) and a blocking call from a synchronous
    handler's thread (``ctx.engine.call(...)``).
    """

    def __init__(self, session: Session) -> None:
        self._session = session
        self._channel: Optional[Sender] = None
        #: The events service.
        self.events = Events(self)
        #: The state service, in this plugin's namespace.
        self.state = State(self)

    def _engine_channel(self) -> Sender:
        if self._channel is None:
            self._channel = self._session.open("engine")
        return self._channel

    async def _call(self, body: Dict[str, Any], argument: Any = None, timeout: Optional[float] = 10.0) -> Any:
        if isinstance(body, str):
            body = {"job": body, "argument": argument}
        return await self._engine_channel().request(body, timeout=timeout)

    def call(self, job: str, argument: Any = None, timeout: Optional[float] = 10.0) -> Any:
        """Calls ``job``: the plugin must list it in ``calls`` and be granted it (else
        :class:`RemoteError` ``permission.denied``); the services' jobs need no grant."""
        return run_in_loop(self._session, self._call, {"job": job, "argument": argument}, None, timeout)

    def call_best(self, point: str, argument: Any = None, timeout: Optional[float] = 10.0) -> Any:
        """Calls the best provider of the extension point ``point``."""
        return run_in_loop(self._session, self._call, {"best": point, "argument": argument}, None, timeout)

    def call_provider(self, point: str, provider: str, argument: Any = None, timeout: Optional[float] = 10.0) -> Any:
        """Calls the provider named ``provider`` of ``point``."""
        return run_in_loop(self._session, self._call, {"best": point, "provider": provider, "argument": argument},
                           None, timeout)

    def call_all(self, point: str, argument: Any = None, timeout: Optional[float] = 10.0) -> Any:
        """Calls every provider of ``point``, best first: ``[{"plugin", "priority", "ok" | "error"}]``."""
        return run_in_loop(self._session, self._call, {"all": point, "argument": argument}, None, timeout)

    def run_hooks(self, event: str, payload: Any, object: str) -> Any:
        """Runs the hook chain of ``event`` (declare :meth:`Plugin.runs_hooks`); returns the outcome."""
        return run_in_loop(self._session, self._call, {"hooks.run": event, "payload": payload, "object": object},
                           None, 300.0)

    def notify(self, event: str, payload: Any, object: str) -> Any:
        """Tells the observers of ``event`` that it happened to ``object``."""
        return run_in_loop(self._session, self._call, {"hooks.notify": event, "payload": payload, "object": object},
                           None, 30.0)

    def send(self, type: str, body: Any) -> Any:
        """Sends a message into the pipeline (declare :meth:`Plugin.sends_messages`); returns the run."""
        return run_in_loop(self._session, self._call, {"pipeline.send": type, "body": body}, None, 300.0)

    def byte_stream(self) -> Tuple[ByteStreamWriter, ByteStreamReader]:
        """A new byte stream: return (or pass) the reader, write to the writer."""
        if threading.get_ident() == self._session._thread:
            return self._session.byte_stream()
        return asyncio.run_coroutine_threadsafe(_make_stream(self._session), self._session._loop).result()


async def _make_stream(session: Session) -> Tuple[ByteStreamWriter, ByteStreamReader]:
    return session.byte_stream()


class Context:
    """What a handler knows: the plugin's situation, the call, and the engine."""

    def __init__(self, runtime: "_Runtime", extra: Optional[Dict[str, Any]] = None) -> None:
        self._runtime = runtime
        #: The invocation's ``extra`` map (phase, object, attribution, caller).
        self.extra: Dict[str, Any] = extra or {}

    @property
    def name(self) -> str:
        """The name the plugin runs under (``--plugin-exec NAME=…``), or its declared name."""
        return self._runtime.name

    @property
    def options(self) -> str:
        """The option string (``PLUGBOARD_OPTIONS``, or the command's arguments)."""
        return self._runtime.options

    @property
    def restarts(self) -> int:
        """How many times the plugin was restarted (rebuild your state when > 0)."""
        return self._runtime.restarts

    @property
    def engine(self) -> Engine:
        """Calls into the engine with this plugin's grants."""
        return self._runtime.engine

    @property
    def events(self) -> Events:
        """The events service (``ctx.engine.events``)."""
        return self._runtime.engine.events

    @property
    def state(self) -> State:
        """The state service in this plugin's namespace (``ctx.engine.state``)."""
        return self._runtime.engine.state

    @property
    def caller(self) -> Optional[str]:
        """The calling plugin's name; None for an operator or the engine."""
        c = self.extra.get("caller")
        return c if isinstance(c, str) else None

    @property
    def phase(self) -> Optional[str]:
        """A hook's phase: mutate, validate or observe."""
        p = self.extra.get("phase")
        return p if isinstance(p, str) else None

    @property
    def object(self) -> Optional[str]:
        """A hook's object (the container id)."""
        o = self.extra.get("object")
        return o if isinstance(o, str) else None

    @property
    def attribution(self) -> Dict[str, str]:
        """A validating hook's attribution: ``{field path: plugin}``."""
        a = self.extra.get("attribution")
        return a if isinstance(a, dict) else {}

    @property
    def session_end(self) -> Optional[str]:
        """Why the session ended (in an ``on_stop`` handler): ``GOAWAY from plugboardd: …``; None while it runs."""
        return self._runtime.session.end_reason

    def byte_stream(self) -> Tuple[ByteStreamWriter, ByteStreamReader]:
        """A new byte stream (``ctx.engine.byte_stream()``)."""
        return self._runtime.engine.byte_stream()

    def stream(self, source: Union[bytes, Iterable[bytes], AsyncIterable[bytes], Any]) -> ByteStreamReader:
        """A byte stream fed from ``source`` (bytes, an iterable or async iterable of bytes, or a
        binary file); return the reader (or put it in the result) and the caller reads it."""
        return self._runtime.stream(source)


# ---- serving

class _Runtime:
    """One connected session serving one plugin."""

    def __init__(self, plugin: Plugin, session: Session, name: str, options: str, restarts: int) -> None:
        self.plugin = plugin
        self.session = session
        self.name = name
        self.options = options
        self.restarts = restarts
        self.engine = Engine(session)
        self.tasks: Set[asyncio.Task] = set()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stream(self, source: Any) -> ByteStreamReader:
        if threading.get_ident() != self.session._thread:
            return asyncio.run_coroutine_threadsafe(self._stream(source), self.session._loop).result()
        writer, reader = self.session.byte_stream()
        self.spawn(self._pump(source, writer))
        return reader

    async def _stream(self, source: Any) -> ByteStreamReader:
        return self.stream(source)

    async def _pump(self, source: Any, writer: ByteStreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                await writer.write(bytes(source))
            elif hasattr(source, "__aiter__"):
                async for chunk in source:
                    await writer.write(chunk)
            elif hasattr(source, "read"):
                while True:
                    chunk = await loop.run_in_executor(None, source.read, 65536)
                    if not chunk:
                        break
                    await writer.write(chunk)
            else:
                it = iter(source)
                done = object()
                while True:
                    chunk = await loop.run_in_executor(None, next, it, done)
                    if chunk is done:
                        break
                    await writer.write(chunk)
            writer.close()
        except (ChannelClosed, PeerGone):
            writer.close()
        except Exception as e:
            print(f"{self.name}: a byte stream's source failed: {e}", file=sys.stderr, flush=True)
            try:
                await writer.reset(f"the source failed: {e}")
            except Exception:
                pass

    async def serve(self) -> str:
        ctx = Context(self)
        for h in self.plugin._on_start:
            await h(ctx)
        accept_task = asyncio.ensure_future(self._accept_loop())
        try:
            return await self.session.wait_closed()
        finally:
            accept_task.cancel()
            for t in list(self.tasks):
                t.cancel()
            for h in self.plugin._on_stop:
                try:
                    await h(ctx)
                except Exception as e:
                    print(f"{self.name}: on_stop failed: {e}", file=sys.stderr, flush=True)

    async def _accept_loop(self) -> None:
        while True:
            channel = await self.session.accept()
            if channel is None:
                return
            self.spawn(self._serve_channel(channel))

    async def _serve_channel(self, channel: Receiver) -> None:
        try:
            while True:
                request = await channel.next_request()
                if request is None:
                    return
                self.spawn(self._answer(request))
                request = None
        except (PeerGone, ProtocolError):
            return

    async def _answer(self, request: Request) -> None:
        inv = request.body
        extra = inv.get("extra") if isinstance(inv, dict) else None
        ctx = Context(self, extra if isinstance(extra, dict) else {})
        what = f"{inv.get('kind')} {inv.get('name')}" if isinstance(inv, dict) else "a call"
        try:
            result = await self.plugin.answer(inv, ctx)
        except PluginError as e:
            return await self._fail(request, e.code, e.message)
        except RemoteError as e:       # a failed engine call: its code passes on unchanged
            return await self._fail(request, e.code, e.message)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return await self._fail(request, "plugin.error", f"{type(e).__name__}: {e}")
        try:
            await request.respond(result)
        except (PeerGone, ChannelClosed):
            return
        except Exception as e:
            message = (f"plugin {self.plugin.name} could not send its answer to {what}: {e}; "
                       "send large data as a byte stream")
            print(f"plugboard: {message}", file=sys.stderr, flush=True)
            await self._fail(request, "reply.unsendable", message)

    async def _fail(self, request: Request, code: str, message: str) -> None:
        try:
            await request.fail(code, message)
        except Exception:
            pass


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _fd_streams() -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(3, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(4, "wb", 0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer


def _parse_connect(connect: str) -> Tuple[str, str, int]:
    """``unix:/path`` → ("unix", path, 0); ``tcp://HOST:PORT`` → ("tcp", host, port)."""
    if connect.startswith("unix:"):
        path = connect[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"connect={connect!r}: give a socket path, unix:/run/plugboard/plugins.sock")
        return "unix", path, 0
    if connect.startswith("tcp://"):
        rest = connect[len("tcp://"):].rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"connect={connect!r}: give tcp://HOST:PORT")
        return "tcp", host.strip("[]"), int(port)
    raise ValueError(f"connect={connect!r}: give unix:/PATH or tcp://HOST:PORT")


def _tls_context(cert: Optional[str], key: Optional[str], ca: Optional[str]) -> ssl.SSLContext:
    missing = [n for n, v in (("tls_cert (PLUGBOARD_TLS_CERT)", cert), ("tls_key (PLUGBOARD_TLS_KEY)", key),
                              ("tls_ca (PLUGBOARD_TLS_CA)", ca)) if not v]
    if missing:
        raise ValueError("a tcp connection is mutual TLS: give " + ", ".join(missing) + " (PEM files)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)  # type: ignore[arg-type]
    context.load_verify_locations(ca)
    # As PluginKit (docs/REMOTE.md): the daemon's certificate must chain to the CA bundle,
    # which is the pin; its host name is not checked (a daemon is reached by address as often
    # as by name, and its certificate need not list them).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _watch_liveness(writer: Any) -> None:
    """TCP keepalive (1 s idle, 1 s apart, 3 probes) and TCP_USER_TIMEOUT of 4 s, as
    PluginKit and plugboardd set on their ends: a pulled cable ends the session in seconds,
    and the plugin connects again, instead of waiting on a dead connection forever."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 4000)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except OSError:
        pass


def _is_pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _environment_context(plugin: Plugin) -> Tuple[str, str, int]:
    env = os.environ
    name = env.get("PLUGBOARD_PLUGIN_NAME") or plugin.name
    options = env.get("PLUGBOARD_OPTIONS") or " ".join(sys.argv[1:])
    try:
        restarts = int(env.get("PLUGBOARD_RESTARTS", "0"))
    except ValueError:
        restarts = 0
    return name, options, restarts


class _Termination:
    """SIGTERM for a plugin that connects in: ends the current session in order (GOAWAY,
    on_stop) and stops reconnecting; during a backoff it ends the wait at once."""

    def __init__(self) -> None:
        self.requested = False
        self.session: Optional[Session] = None
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.requested = True
        self.event.set()
        if self.session is not None:
            self.session.close("the plugin got SIGTERM")


async def _serve_session(plugin: Plugin, reader: asyncio.StreamReader, writer: Any, name: str, options: str,
                         restarts: int, on_connected: Optional[Callable[[], None]] = None,
                         termination: Optional[_Termination] = None) -> Tuple[str, Optional[str]]:
    meta = plugin.declaration()
    session = Session(reader, writer, name=name, meta=meta, log=_log)
    await session.start()
    if termination is not None:
        termination.session = session
        if termination.requested:  # SIGTERM came while the session was starting
            session.close("the plugin got SIGTERM")
    else:
        loop = asyncio.get_running_loop()
        try:
            # SIGTERM (the daemon's next step when a plugin does not exit after GOAWAY) ends
            # the session in order too: GOAWAY to the daemon, on_stop handlers, exit 0.
            loop.add_signal_handler(signal.SIGTERM, session.close, "the plugin got SIGTERM")
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    if on_connected is not None:
        on_connected()
    runtime = _Runtime(plugin, session, name, options, restarts)
    try:
        reason = await runtime.serve()
    finally:
        if termination is not None:
            termination.session = None
    return reason, getattr(session, "goaway_reason", None)


async def serve_async(plugin: Plugin, *, connect: Optional[str] = None, tls_cert: Optional[str] = None,
                      tls_key: Optional[str] = None, tls_ca: Optional[str] = None, reconnect: bool = True,
                      max_backoff: float = 5.0) -> str:
    """Serves ``plugin`` on the running loop until its session ends; returns why.

    Without ``connect`` (or ``PLUGBOARD_CONNECT``): on fds 3 (read) and 4 (write), as the
    daemon starts it. With ``connect="unix:/path"`` or ``"tcp://HOST:PORT"`` (mutual TLS,
    PEM files ``tls_cert``/``tls_key``/``tls_ca`` or ``PLUGBOARD_TLS_*``): connects to the
    daemon, speaks the same wire (HELLO first, with the declaration), and, with
    ``reconnect``, connects again after the connection drops — backoff from 0.1 s doubling
    to ``max_backoff`` — declaring itself again each time.
    """
    connect = connect or os.environ.get("PLUGBOARD_CONNECT") or None
    name, options, restarts = _environment_context(plugin)
    if connect is None:
        reader, writer = await _fd_streams()
        reason, goaway = await _serve_session(plugin, reader, writer, name, options, restarts)
        _log(f"{name}: session ended: {reason}")
        return reason
    scheme, host, port = _parse_connect(connect)
    context = None
    if scheme == "tcp":
        context = _tls_context(tls_cert or os.environ.get("PLUGBOARD_TLS_CERT"),
                               tls_key or os.environ.get("PLUGBOARD_TLS_KEY"),
                               tls_ca or os.environ.get("PLUGBOARD_TLS_CA"))
    backoff = 0.1
    attempt = 0
    termination = _Termination()
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, termination)
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    while True:
        connected = False

        def mark() -> None:
            nonlocal connected, backoff
            connected = True
            backoff = 0.1

        try:
            if scheme == "unix":
                reader, writer = await asyncio.open_unix_connection(host, limit=2 ** 26)
            else:
                # A connect to a host that cannot be reached (a pulled cable) is given up
                # after 10 s and tried again on the backoff, as PluginKit does.
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=context, limit=2 ** 26), timeout=10)
                _watch_liveness(writer)
            reason, _ = await _serve_session(plugin, reader, writer, name, options, restarts + attempt, mark,
                                             termination)
            _log(f"{name}: session with {connect} ended: {reason}")
        except (OSError, ssl.SSLError, PeerGone, ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            reason = f"{type(e).__name__}: {e}"
            _log(f"{name}: connecting to {connect} failed: {reason}")
        if not reconnect or termination.requested:
            return reason
        if connected:
            attempt += 1
        delay = backoff * (0.8 + 0.4 * random.random())
        _log(f"{name}: connecting to {connect} again in {delay:.1f} s")
        try:
            await asyncio.wait_for(termination.event.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass
        if termination.requested:
            return "the plugin got SIGTERM"
        backoff = min(backoff * 2, max_backoff)


def _started_by_hand() -> bool:
    return not (os.environ.get("PLUGBOARD_PROTOCOL") and _is_pipe_or_socket(3) and _is_pipe_or_socket(4))


def serve(plugin: Plugin, *, connect: Optional[str] = None, tls_cert: Optional[str] = None,
          tls_key: Optional[str] = None, tls_ca: Optional[str] = None, reconnect: bool = True) -> NoReturn:
    """Serves ``plugin`` until the daemon ends its session (GOAWAY or end of file), then exits 0.

    Started by hand (no daemon on fds 3 and 4, no ``connect``), it says that it is a plugin
    and how to run one, and exits with status 2. See :func:`serve_async` for ``connect``.
    """
    connect = connect or os.environ.get("PLUGBOARD_CONNECT") or None
    if connect is None and _started_by_hand():
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "plugin"
        script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else program
        command = f"{os.path.basename(sys.executable) or 'python3'} {script}"
        sys.stderr.write(
            f"{program} is a Plugboard plugin: it talks to plugboardd over file descriptors 3 and 4,\n"
            f"so it does nothing when started by hand. Run it under the daemon:\n\n"
            f"  plugboardd --plugin-exec \"NAME={command}\"\n\n"
            f"or connect it to a daemon that listens for plugins: PLUGBOARD_CONNECT=unix:/PATH {command}\n")
        sys.stderr.flush()
        os._exit(2)
    status = 0
    try:
        reason = asyncio.run(serve_async(plugin, connect=connect, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                reconnect=reconnect))
        if reason.startswith("protocol violation"):
            status = 1
    except KeyboardInterrupt:
        status = 130
    except (ProtocolError, PeerGone) as e:
        _log(f"{plugin.name}: {e}")
        status = 1
    except ValueError as e:
        _log(f"{plugin.name}: {e}")
        status = 2
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads of synchronous handlers may still be blocked: do not wait for them.
    os._exit(status)
