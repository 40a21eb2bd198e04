"""`sandboxmgr doctor` on leftovers that sandboxmgr itself (nearly) never makes, made by hand:
a sandbox init whose manager is gone, a process still chrooted in a dead build's
directory, a stale lock, a dead run's cgroup with a process in it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxmgr import cgroups
from tests.adversarial.conftest import doctor, need_controllers, wait_until
from tests.conftest import CLI

pytestmark = [pytest.mark.adversarial, pytest.mark.root]

# A process that calls itself what the sandbox's PID 1 calls itself, then waits.
FAKE_INIT = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'sandboxmgr-init', 0, 0, 0); "
             "open({ready!r}, 'w').close(); time.sleep(300)")


def orphan(code: str) -> int:
    """Start ``code`` in a grandchild whose parent exits at once: the host's init adopts it."""
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - the intermediate process
        os.close(read)
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        os.write(write, str(child.pid).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(middle, 0)
    with os.fdopen(read) as pipe:
        return int(pipe.read())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_an_init_whose_manager_is_gone_is_found_and_killed(tiny: CLI, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    pid = orphan(FAKE_INIT.format(ready=str(ready)))
    try:
        assert wait_until(ready.exists)
        result, found = doctor(tiny, machine=True)
        assert result.code == 1
        assert any(f["kind"] == "process" and f["what"] == str(pid) and "manager is gone" in str(f["detail"])
                   for f in found), found
        result, found = doctor(tiny, "--fix", machine=True)
        assert result.code == 0, found
        assert wait_until(lambda: not alive(pid), timeout=10)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_process_chrooted_in_a_dead_builds_directory_is_killed_then_the_directory_removed(
        tiny: CLI, tmp_path: Path) -> None:
    dead = tiny.store / "tmp" / "build-0000deadbeef" / "rootfs"
    dead.mkdir(parents=True)
    ready = tmp_path / "ready"
    code = (f"import os, time; open({str(ready)!r}, 'w').close(); os.chroot({str(dead)!r}); os.chdir('/'); "
            "time.sleep(300)")
    pid = orphan(code)
    try:
        assert wait_until(ready.exists)
        assert wait_until(lambda: os.readlink(f"/proc/{pid}/root") == str(dead))
        _, found = doctor(tiny, machine=True)
        kinds = {(f["kind"], f["what"]) for f in found}
        assert ("process", str(pid)) in kinds and ("tmp", str(dead.parent)) in kinds, found
        result, found = doctor(tiny, "--fix", machine=True)
        assert result.code == 0 and all(f["fixed"] for f in found), found
        assert wait_until(lambda: not alive(pid), timeout=10)
        assert not dead.parent.exists()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_stale_lock_is_removed_and_a_held_one_kept(tiny: CLI) -> None:
    locks = tiny.store / "locks"
    stale = locks / "sandbox-vanished.lock"
    tiny.ok("create", "tiny", "--name", "holder")
    proc = tiny.popen("exec", "holder", "sleep", "3")
    try:
        assert wait_until(lambda: (locks / "sandbox-holder.lock").exists())
        # Made after the commands above: each command removes the stale locks it finds.
        stale.write_text("12345\n")
        _, found = doctor(tiny)
        assert [(f["kind"], f["what"]) for f in found] == [("lock", str(stale))], found
        doctor(tiny, "--fix")
        assert not stale.exists() and (locks / "sandbox-holder.lock").exists()
    finally:
        proc.communicate(timeout=30)
        tiny.ok("rm", "holder")


def test_a_dead_runs_cgroup_with_a_process_left_is_emptied_and_removed(tiny: CLI, tmp_path: Path) -> None:
    """As if a manager had died with its sandbox's process moved out of its PID namespace's reach."""
    need_controllers("pids")
    (hierarchy,) = [h for h in cgroups.hierarchies() if "pids" in h.controllers]
    parent = hierarchy.own_dir / cgroups.GROUP_DIR
    parent.mkdir(exist_ok=True)
    group = parent / "999999999-1-abcdef"  # a manager that does not exist
    group.mkdir()
    ready = tmp_path / "ready"
    pid = orphan(f"import time; open({str(ready)!r}, 'w').close(); time.sleep(300)")
    try:
        assert wait_until(ready.exists)
        (group / "cgroup.procs").write_text(str(pid))
        _, found = doctor(tiny, machine=True)
        (finding,) = [f for f in found if f["what"] == str(group)]
        assert finding["kind"] == "cgroup" and "1 process left in it" in str(finding["detail"])
        doctor(tiny, "--fix", machine=True)
        assert not group.exists()
        assert wait_until(lambda: not alive(pid), timeout=10)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        if group.exists():
            cgroups.kill_all(group)
            cgroups.remove_dir(group)

