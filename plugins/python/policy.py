#!/usr/bin/env python3
"""container-policy: a Plugboard plugin in Python (the plugboard SDK, sdk/python).

It reads a policy file (JSON) and applies it to every container created:

    {"env": ["POLICY=strict"],                 # appended to every container's env
     "labels": {"io.example.policy": "v1"},    # set on every container
     "deny_commands": ["nc", "telnet"],        # a container whose args[0] is one of these is vetoed
     "require_labels": ["team"]}               # a container without these labels is vetoed

The file is read again when it changes (its modification time), so an operator edits it
without restarting anything. Run it under the daemon with the file as its option:

    plugboardd --plugin containers \
        --plugin-exec "policy=python3 plugins/python/policy.py plugins/python/policy.example.json"

`plugboard call policy.show` prints the policy in force.
"""
import json
import os

from plugboard import Plugin, PluginError, Veto, serve

plugin = Plugin("container-policy", version="1.0")
_cache = {"path": None, "mtime": None, "policy": {}}


def policy(ctx):
    """The policy file named by the plugin's option, read again when it changed."""
    path = ctx.options.strip()
    if not path:
        raise PluginError("policy.no-file", "give the policy file as the plugin's option")
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise PluginError("policy.unreadable", f"cannot read the policy file {path}: {e.strerror}")
    if _cache["path"] != path or _cache["mtime"] != mtime:
        with open(path) as f:
            try:
                loaded = json.load(f)
            except ValueError as e:
                raise PluginError("policy.malformed", f"{path} is not JSON: {e}")
        if not isinstance(loaded, dict):
            raise PluginError("policy.malformed", f"{path} must hold a JSON object")
        _cache.update(path=path, mtime=mtime, policy=loaded)
    return _cache["policy"]


@plugin.hook("container.create", priority=20, policy="required")
def apply(spec, ctx):
    """Adds the policy's env and labels to the container."""
    p = policy(ctx)
    spec.setdefault("env", []).extend(e for e in p.get("env", []) if e not in spec["env"])
    spec.setdefault("labels", {}).update(p.get("labels", {}))
    return spec


@plugin.hook("container.create", phase="validate")
def check(spec, ctx):
    """Vetoes denied commands and containers that lack required labels (after every mutation)."""
    p = policy(ctx)
    args = spec.get("args") or []
    if args and os.path.basename(args[0]) in p.get("deny_commands", []):
        raise Veto(f"the policy denies the command {args[0]}")
    missing = [k for k in p.get("require_labels", []) if k not in (spec.get("labels") or {})]
    if missing:
        raise Veto(f"the policy requires the labels {', '.join(missing)}")


@plugin.job("policy.show")
def show(arg, ctx):
    """The policy in force."""
    return {"file": ctx.options.strip(), "policy": policy(ctx)}


if __name__ == "__main__":
    serve(plugin)
