"""Limits for an ordinary user (rootless mode): only a cgroup v2 subtree delegated to it, else
one error that names what is missing - never a limit silently left out."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxmgr.cgroups import Hierarchy, delegated
from sandboxmgr.errors import SandboxError

HINT = "systemd-run --user --scope -p Delegate=yes"


def _unified(tmp_path: Path, own: str, offered: str = "cpu memory pids") -> Hierarchy:
    """A made-up v2 hierarchy in tmp_path (the caller owns every directory of it)."""
    mount = tmp_path / "unified"
    (mount / own.strip("/")).mkdir(parents=True)
    (mount / own.strip("/")).parent.joinpath("cgroup.controllers").write_text(offered + "\n")
    return Hierarchy(2, mount, frozenset({"cpu", "memory", "pids"}), own)


def test_the_parent_of_the_users_cgroup_is_where_its_runs_go(tmp_path: Path) -> None:
    unified = _unified(tmp_path, "/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope")
    [chosen] = delegated([Hierarchy(1, tmp_path / "memory", frozenset({"memory"}), "/"), unified],
                         ("memory", "pids"))
    assert chosen.delegated and chosen.version == 2
    assert chosen.run_parent == unified.own_dir.parent / "sandboxmgr"


def test_v1_hierarchies_alone_are_one_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        delegated([Hierarchy(1, tmp_path / "memory", frozenset({"memory"}), "/")], ("memory",))
    assert caught.value.message == ("cannot apply the memory limit as an ordinary user: it needs a cgroup v2 "
                                    "subtree delegated to you, and no cgroup v2 hierarchy is mounted "
                                    "(v1 ones are root's)")
    assert HINT in (caught.value.hint or "")


def test_a_cgroup_at_the_root_is_not_delegated(tmp_path: Path) -> None:
    unified = _unified(tmp_path, "/")
    with pytest.raises(SandboxError) as caught:
        delegated([unified], ("memory", "pids", "cpu"))
    assert caught.value.message == (
        "cannot apply the memory, pids and cpu limits as an ordinary user: it needs a cgroup v2 subtree "
        f"delegated to you, and the parent of this process's cgroup (/ in {unified.mount}) is not yours")


def test_a_parent_that_is_not_the_users_is_not_delegated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unified = _unified(tmp_path, "/user.slice/user-1000.slice/session-3.scope")
    monkeypatch.setattr("os.geteuid", lambda: 4242)  # the directories are someone else's
    with pytest.raises(SandboxError, match="is not yours"):
        delegated([unified], ("pids",))


def test_a_controller_the_delegated_cgroup_lacks_is_named(tmp_path: Path) -> None:
    unified = _unified(tmp_path, "/user.slice/user@1000.service/app.slice/run.scope", offered="pids")
    with pytest.raises(SandboxError) as caught:
        delegated([unified], ("memory", "pids", "cpu"))
    parent = unified.own_dir.parent
    assert caught.value.message == (f"cannot apply the memory and cpu limits as an ordinary user: the cgroup "
                                    f"delegated to you ({parent}) offers only: pids")
    assert "Delegate=" in (caught.value.hint or "")


def test_a_hybrid_hosts_v1_controllers_are_never_a_users_fallback(tmp_path: Path) -> None:
    """This project's machines: cpu, memory and pids on v1 hierarchies (root's), a v2 hierarchy
    that offers only hugetlb. A subtree delegated there cannot hold a limit: one error, naming
    what the subtree offers, and never the v1 hierarchy that has the controller."""
    unified = _unified(tmp_path, "/user.slice/user@1000.service/app.slice/run.scope", offered="hugetlb")
    v1 = [Hierarchy(1, tmp_path / name, frozenset({name}), "/") for name in ("cpu", "memory", "pids")]
    with pytest.raises(SandboxError) as caught:
        delegated([*v1, unified], ("memory", "pids"))
    assert caught.value.message == ("cannot apply the memory and pids limits as an ordinary user: the cgroup "
                                    f"delegated to you ({unified.own_dir.parent}) offers only: hugetlb")
