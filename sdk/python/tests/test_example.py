"""plugins/python/policy.py, the example plugin, in a real plugboardd with the containers plugin:
the container.create hooks of a real chain (runc creates the container; root needed)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import REPO, plugin_command

POLICY = os.path.join(REPO, "plugins", "python", "policy.py")


def busybox_rootfs(d: str) -> str:
    """A busybox root file system (Debian's busybox-static), as the Swift container tests make."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        pytest.fail("busybox is not installed (apt-get install busybox-static; make deps does it)")
    if os.geteuid() != 0:
        pytest.fail("containers need root: run the tests as root (make test does on CI)")
    rootfs = os.path.join(d, "rootfs")
    for sub in ("bin", "proc", "sys", "dev", "tmp", "mnt"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy(busybox, os.path.join(rootfs, "bin", "busybox"))
    for applet in ("sh", "true", "echo"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    return rootfs


def test_policy_plugin_in_a_real_chain(daemon_factory, tmpdir_short):
    policy_file = os.path.join(tmpdir_short, "policy.json")
    with open(policy_file, "w") as f:
        json.dump({"env": ["POLICY=strict"], "labels": {"io.example.policy": "v1"}, "deny_commands": ["nc"]}, f)
    d = daemon_factory("--plugin", "containers",
                       "--plugin-exec", "policy=" + plugin_command(POLICY, policy_file))
    d.wait_active("policy")
    assert d.call("policy.show")["policy"]["deny_commands"] == ["nc"]
    rootfs = busybox_rootfs(tmpdir_short)

    r = d.cli("container", "create", "--rootfs", rootfs, "--name", "ok1", "-e", "A=1", "--", "true")
    assert r.returncode == 0, r.stderr.decode()
    r = d.cli("container", "inspect", "ok1", "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    inspected = json.loads(r.stdout)
    text = json.dumps(inspected)
    assert "POLICY=strict" in text and "A=1" in text
    assert "io.example.policy" in text
    assert "policy" in json.dumps(inspected.get("changed_by", inspected))

    r = d.cli("container", "create", "--rootfs", rootfs, "--name", "bad1", "--", "nc", "-l")
    assert r.returncode != 0
    assert "the policy denies the command nc" in (r.stderr + r.stdout).decode()

    # The file is read again when it changes: no restart.
    with open(policy_file, "w") as f:
        json.dump({"env": [], "labels": {}, "deny_commands": [], "require_labels": ["team"]}, f)
    os.utime(policy_file, ns=(1, 10 ** 18))
    r = d.cli("container", "create", "--rootfs", rootfs, "--name", "nolabel", "--", "true")
    assert r.returncode != 0 and "requires the labels team" in (r.stderr + r.stdout).decode()
    r = d.cli("container", "create", "--rootfs", rootfs, "--name", "labelled", "--label", "team=a", "--", "true")
    assert r.returncode == 0, r.stderr.decode()
    for name in ("ok1", "labelled"):
        d.cli("container", "rm", "--force", name)
