"""An attacker's review of exec's join ticket and of ``top`` (issue 15): what the ticket path
trusts must be what the general path would give the command now, and what ``top`` shows of a
sandbox must be the sandbox's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sandboxmgr import catalog, live
from sandboxmgr.store import Store
from tests.conftest import CLI, ConcurrentBuild, UserCLI

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

_ALLOW_ALL = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
_NO_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}


def test_exec_into_a_started_sandbox_reads_its_seccomp_profile_file_again(
        cli: CLI, fast_cli: UserCLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    """A sandbox's seccomp profile file is read again at each exec (README: the path is kept, not
    the filter): tightened after the start, the next exec - by ticket or not - runs under the new
    one; removed, exec refuses. A ticket holding the filter of the start would keep the old one."""
    profile = tmp_path / "seccomp.json"
    profile.write_text(json.dumps(_ALLOW_ALL))
    name = f"sc-{os.urandom(3).hex()}"
    cli.ok("create", bookworm.profile, "--name", name, "--security-opt", f"seccomp={profile}")
    try:
        cli.ok("start", name)
        fast_cli.ok("exec", name, "mkdir", "/before")
        profile.write_text(json.dumps(_NO_MKDIR))
        tightened = fast_cli("exec", name, "mkdir", "/after")
        assert tightened.code != 0 and "Operation not permitted" in tightened.err, tightened
        assert cli("exec", name, "mkdir", "/after").code != 0  # as the general path does
        profile.unlink()
        gone = fast_cli("exec", name, "true")
        assert gone.code == 125 and "cannot read it" in gone.err, gone
    finally:
        cli("rm", "-f", name)


def test_top_never_shows_a_host_process_that_took_the_pid_of_one_of_the_sandbox(
        cli: CLI, live_box: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``top`` lists the sandbox's pids, then reads each one's /proc files: a process of the
    sandbox that ends in between leaves its pid to the next process the host makes, which the
    sandbox can hasten by making processes. That process (here: the test's own, standing for it)
    is the host's and is not shown."""
    cli.ok("start", live_box)
    cli.ok("exec", live_box, "sh", "-c", "(sleep 300 > /dev/null 2>&1 &)")
    members = live._members

    def reused(namespace: str, init: int) -> list[int]:
        return [*members(namespace, init), os.getpid()]  # listed, then ended: its pid is now ours

    monkeypatch.setattr(live, "_members", reused)
    rows = catalog.sandbox_processes(Store(cli.store), live_box)
    assert [row["sandbox_pid"] for row in rows][:1] == [1] and any("sleep 300" in row["command"] for row in rows)
    assert os.getpid() not in [row["pid"] for row in rows], rows
