#!/usr/bin/env python3
"""A remote plugin on the Python SDK, for RemoteNetnsTests: it connects in from another
network namespace (PLUGBOARD_CONNECT=tcp://..., PLUGBOARD_TLS_*), serves py-far.echo and
labels every container created (io.plugboard.remote-py=py-far) in a container.create hook."""
from plugboard import Plugin, serve

plugin = Plugin("py-far", version="1.0")


@plugin.job("py-far.echo")
async def echo(arg):
    return arg


@plugin.hook("container.create", priority=20, policy="optional")
def label(spec, ctx):
    labels = spec.get("labels") or {}
    labels["io.plugboard.remote-py"] = "py-far"
    spec["labels"] = labels
    return spec


serve(plugin)
