"""Plugboard plugins in Python.

::

    from plugboard import Plugin, serve

    plugin = Plugin("greeter", version="1.0")

    @plugin.job("greet")
    def greet(arg):
        return f"hello, {arg}"

    @plugin.hook("container.create", priority=10, policy="optional")
    def add_env(spec, ctx):
        spec["env"].append("GREETED=1")
        return spec

    serve(plugin)

The package speaks the Chan wire protocol (docs/PROTOCOL.md) on fds 3 and 4, as
plugboardd starts an exec plugin, or over a connection it makes itself
(``serve(plugin, connect="unix:/path")``). Its only dependency is ``msgpack``.
"""
from ._plugin import (PROTOCOL_NAME, Context, Engine, Events, Message, Plugin, PluginError, State, Veto, serve,
                      serve_async)
from ._session import (MAX_FRAME, WINDOW, ByteStreamReader, ByteStreamWriter, CallTimeout, ChannelClosed,
                       ChannelReset, FrameTooLarge, PeerGone, ProtocolError, Receiver, RemoteError, Request, Sender,
                       Session)

__version__ = "0.1.0"

__all__ = [
    "Plugin", "serve", "serve_async", "Context", "Engine", "Events", "State", "Veto", "PluginError", "Message",
    "RemoteError", "CallTimeout", "ChannelClosed", "ChannelReset", "FrameTooLarge", "PeerGone", "ProtocolError",
    "Sender", "Receiver", "ByteStreamReader", "ByteStreamWriter", "Request", "Session", "MAX_FRAME", "WINDOW",
    "PROTOCOL_NAME", "__version__",
]
