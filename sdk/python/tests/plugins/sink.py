"""A plugin that uses every part of the SDK, for the tests (run by a real plugboardd)."""
import asyncio
import os
import sys
import threading

from plugboard import Message, Plugin, PluginError, Veto, serve

plugin = Plugin("sink", version="2.0", calls=["echo", "py.widget"])
plugin.runs_hooks("py.widget.create")
plugin.sends_messages("py.note")


@plugin.job("py.greet")
def greet(arg):
    return f"hello, {arg}"


@plugin.job("py.async-echo")
async def async_echo(arg):
    await asyncio.sleep(0.01)
    return arg


@plugin.job("py.sync-echo")
def sync_echo(arg):
    return {"value": arg, "thread": threading.current_thread() is not threading.main_thread()}


@plugin.job("py.whoami")
def whoami(arg, ctx):
    return {"caller": ctx.caller, "name": ctx.name, "restarts": ctx.restarts}


@plugin.job("py.call-echo")
def call_echo(arg, ctx):
    # A synchronous handler: the engine call blocks this worker thread.
    return ctx.engine.call("echo", arg)


@plugin.job("py.call-echo-async")
async def call_echo_async(arg, ctx):
    return await ctx.engine.call("echo", arg)


@plugin.job("py.call-denied")
async def call_denied(arg, ctx):
    return await ctx.engine.call("py.secret", arg)       # not in calls: permission.denied passes on


@plugin.job("py.secret")
def secret(arg):
    return "secret"


@plugin.job("py.fail")
def fail(arg):
    raise PluginError("py.nope", f"refused {arg}")


@plugin.job("py.crash")
def crash(arg):
    return 1 / 0


@plugin.job("py.upper")
async def upper(arg, ctx):
    """Reads the caller's byte stream (plugboard call --stdin) and streams it back in upper case."""
    stream = arg["stdin"] if isinstance(arg, dict) else arg

    async def chunks():
        async for chunk in stream:
            yield chunk.upper()
    return ctx.stream(chunks())


@plugin.job("py.upper-sync")
def upper_sync(arg, ctx):
    data = arg.read_all()                 # blocking reads, from a worker thread
    return ctx.stream(data.upper())


@plugin.job("py.hand-back")
def hand_back(arg):
    """Returns the caller's own byte stream: an end received cannot travel as it is, so the SDK bridges it."""
    return arg["stdin"]


@plugin.job("py.huge")
def huge(arg):
    return "x" * (2 * 1024 * 1024)          # over the daemon's 1 MiB max_frame


@plugin.job("py.bytes")
def many_bytes(arg, ctx):
    """Streams `arg` bytes (a pattern), more than one window: flow control both ways."""
    n = int(arg)

    def gen():
        sent = 0
        block = bytes(range(256)) * 256      # 64 KiB
        while sent < n:
            piece = block[: min(len(block), n - sent)]
            sent += len(piece)
            yield piece
    return ctx.stream(gen())


@plugin.job("py.events")
async def events(arg, ctx):
    sub = await ctx.events.subscribe(types=["py.test.*"])
    await ctx.events.publish("py.test.ping", {"n": arg})
    async for event in sub:
        sub.close()
        return {"type": event["type"], "n": event.get("attributes", event).get("n"), "source": event.get("source")}


@plugin.job("py.events-sync")
def events_sync(arg, ctx):
    sub = ctx.events.subscribe(types=["py.sync.*"])
    ctx.events.publish("py.sync.ping", {"n": arg})
    for event in sub:
        sub.close()
        return event["type"]


@plugin.job("py.state")
def state(arg, ctx):
    before = ctx.state.get(arg["key"], "absent")
    put = ctx.state.put(arg["key"], arg["value"])
    return {"before": before, "after": ctx.state.get(arg["key"]), "version": put["version"]}


@plugin.job("py.state-async")
async def state_async(arg, ctx):
    await ctx.state.put(arg["key"], arg["value"])
    return await ctx.state.get(arg["key"])


@plugin.job("py.run-chain")
async def run_chain(arg, ctx):
    return await ctx.engine.run_hooks("py.widget.create", arg, "w1")


@plugin.job("py.send-note")
async def send_note(arg, ctx):
    return await ctx.engine.send("py.note", arg)


@plugin.job("py.best")
async def best(arg, ctx):
    return await ctx.engine.call_best("py.widget", arg)


@plugin.hook("py.widget.create", priority=10)
def add_color(spec, ctx):
    spec["color"] = "red"
    spec["object"] = ctx.object
    return spec


@plugin.hook("py.widget.create", phase="validate")
async def check(spec, ctx):
    if spec.get("bad"):
        raise Veto("bad widgets are refused")


@plugin.messages("py.note", priority=5)
def note(body):
    return [Message("py.note.seen", {"text": str(body).upper()})]


@plugin.provide("py.widget", priority=7)
def provider(arg):
    return {"provided": arg}


@plugin.on_stop
def stopped(ctx):
    marker = os.environ.get("SINK_STOP_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(f"stopped: {ctx.session_end}")
    print("sink: on_stop ran", file=sys.stderr, flush=True)


if __name__ == "__main__":
    serve(plugin)
