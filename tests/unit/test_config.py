"""A sandbox's config: field rules for merging and saving (no root, nothing entered)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr.config import RULES, SandboxConfig, options
from sandboxmgr.errors import SandboxError
from sandboxmgr.limits import Limits
from sandboxmgr.mounts import BindMount


def test_every_setting_survives_a_save_and_load() -> None:
    saved = SandboxConfig(hostname="box", env={"A": "1"}, workdir="/src", user="nobody", network="none",
                          binds=(BindMount(Path("/data"), "/data", readonly=True, copy_on_write=False),),
                          caches=(BindMount(Path("/cache"), "/var/cache/apt/archives"),),
                          limits=Limits(pids=64), no_new_privs=False, seccomp="unconfined", isolation="chroot")
    assert SandboxConfig.from_json(saved.to_json()) == saved


def test_a_sandbox_saved_before_a_setting_existed_loads_with_its_default() -> None:
    old = SandboxConfig.from_json({"hostname": "old", "mounts": [], "limits": {}})
    assert old == SandboxConfig(hostname="old", env={})
    assert old.isolation == "pivot_root" and old.no_new_privs is True and old.limits is None


def test_the_command_and_its_tty_are_never_saved() -> None:
    data = options(argv=("ls",), tty=True, isolation="chroot").to_json()
    assert "argv" not in data and "tty" not in data and data["isolation"] == "chroot"
    assert [rule.key for rule in RULES.values() if rule.saved][:6] == [
        "hostname", "env", "workdir", "user", "network", "mounts"]


def test_only_what_the_command_line_gives_replaces_the_saved_value() -> None:
    saved = SandboxConfig(hostname="box", env={"A": "1"}, isolation="chroot", no_new_privs=False,
                          binds=(BindMount(Path("/a"), "/a"),))
    run = saved.merged(options(argv=("true",), env={"B": "2"}, workdir="", no_new_privs=None,
                               binds=(BindMount(Path("/b"), "/b"),)))
    assert run.isolation == "chroot" and run.no_new_privs is False and run.workdir is None
    assert run.env == {"A": "1", "B": "2"} and [b.target for b in run.binds] == ["/a", "/b"]
    assert run.argv == ("true",)
    assert saved.merged(options(isolation="pivot_root", no_new_privs=True)).isolation == "pivot_root"


def test_a_bad_host_name_is_refused_when_merged() -> None:
    with pytest.raises(SandboxError, match="is not a valid host name"):
        SandboxConfig(hostname="box").merged(options(hostname="-bad-"))
