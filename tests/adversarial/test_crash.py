"""Attack 6: SIGKILL of the manager at random points of `build` and `run`.

Fixed seeds choose the moments, so a failure can be replayed. After each kill:
no process of the build or the sandbox is left, nothing is mounted under the
store, no half-built image is listed, a dead run's cgroup holds no process;
then the next command must recover - and after it `doctor` finds nothing.
The builds are of the Tiny Distro (a second or so), so the kills land in the
bootstrap, the package install and the publishing alike.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandboxmgr import cgroups, mountinfo
from tests.adversarial.conftest import doctor, fresh_tiny, need_controllers, processes_rooted_in, wait_until
from tests.conftest import CLI
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root]

# Build seeds chosen so the kills spread over the build (0.17s ... 1.09s after the start).
BUILD_SEEDS = [14, 7, 9, 5, 6, 20]
RUN_SEEDS = [1, 2, 3, 4, 5]


def assert_nothing_running_or_mounted(cli: CLI) -> None:
    assert wait_until(lambda: not processes_rooted_in(cli.store), timeout=15), \
        f"processes left in the store: {processes_rooted_in(cli.store)}"
    assert not mountinfo.mounts_under(cli.store)


@pytest.mark.parametrize("seed", BUILD_SEEDS)
def test_sigkill_during_build_leaves_nothing_half_built(tmp_path: Path, rpm_repo: RpmRepo, seed: int) -> None:
    cli = fresh_tiny(tmp_path, rpm_repo)
    delay = random.Random(seed).uniform(0.05, 1.2)
    proc = cli.popen("build", "tiny")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    assert_nothing_running_or_mounted(cli)
    images = json.loads(cli.ok("images", "--json").out) if (cli.store / "images").exists() else []
    for image in images:  # only if the build had finished before the kill
        assert not any(layer["missing"] for layer in image["layers"]), image
    # Whatever the kill left is a leftover (tmp, lock), not something doctor cannot explain.
    _, found = doctor(cli)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    # The next command recovers: it removes the leftovers and builds (or reuses) the image.
    cli.ok("build", "tiny")
    assert cli.ok("run", "tiny", "tiny-hello").out.strip() == "hello from a dependency"
    assert doctor(cli)[1] == []
    assert list((cli.store / "tmp").iterdir()) == []


@pytest.mark.parametrize("seed", RUN_SEEDS)
def test_sigkill_during_a_run_with_limits_leaves_no_process_mount_or_cgroup(tiny: CLI, seed: int) -> None:
    need_controllers("memory", "pids")
    tag = 6000 + seed
    delay = random.Random(seed).uniform(0.0, 0.6)
    proc = tiny.popen("run", "--memory", "64M", "--pids-limit", "64", "tiny", "sh", "-c", f"exec sleep {tag}")
    manager = proc.pid
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    assert wait_until(lambda: subprocess.run(["pgrep", "-x", "-f", f"sleep {tag}"]).returncode != 0)
    assert_nothing_running_or_mounted(tiny)

    def dead_runs_cgroups() -> list[cgroups.RunGroup]:
        return [g for g in cgroups.find_run_groups() if g.path.name.startswith(f"{manager}-")]

    # Empty once the host's init has reaped the sandbox's PID 1 (an orphan when its manager died).
    assert wait_until(lambda: all(not g.procs for g in dead_runs_cgroups()), timeout=10), dead_runs_cgroups()
    # The next run with limits removes the dead run's cgroups and directory.
    tiny.ok("run", "--memory", "64M", "--pids-limit", "64", "tiny", "true")
    assert not dead_runs_cgroups()
    assert doctor(tiny)[1] == []


# --- create, rm, exec ---------------------------------------------------------------------------
# Seeds chosen so the kills spread over the command: before, during and after the work of a
# create (0.07s ... 0.23s after the start; it takes about 0.2s), of an rm of 20000 files
# (0.07s ... 0.48s; about 0.45s) and of an exec (0.12s ... 0.23s, the command starting).
CREATE_SEEDS = [8, 16, 9, 29, 27, 26, 20]
RM_SEEDS = [14, 4, 7, 11, 10, 24, 15]
EXEC_SEEDS = [1, 4, 7]


def kill_after(proc: subprocess.Popen[str], seed: int, low: float = 0.1, high: float = 0.8) -> None:
    time.sleep(random.Random(seed).uniform(low, high))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)


def sandboxes(cli: CLI) -> list[str]:
    return [row["name"] for row in json.loads(cli.ok("ls", "--json").out)]


def assert_recovered(cli: CLI) -> None:
    """After the next command: nothing in tmp/, no stale lock or mount (doctor)."""
    assert list((cli.store / "tmp").iterdir()) == []
    assert doctor(cli)[1] == []


@pytest.mark.parametrize("seed", CREATE_SEEDS)
def test_sigkill_during_create_leaves_the_sandbox_whole_or_absent(tiny: CLI, seed: int) -> None:
    name = f"killed-create-{seed}"
    kill_after(tiny.popen("create", "tiny", "--name", name), seed, 0.02, 0.25)
    assert_nothing_running_or_mounted(tiny)
    _, found = doctor(tiny)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    if name in sandboxes(tiny):  # whole: usable as it is
        place = tiny.store / "sandboxes" / name
        assert all((place / sub).is_dir() for sub in ("upper", "work", "root")), list(place.iterdir())
        assert tiny.ok("exec", name, "tiny-hello").out.strip() == "hello from a dependency"
    else:  # absent: nothing of it, and the name is free
        assert not (tiny.store / "sandboxes" / name).exists()
        tiny.ok("create", "tiny", "--name", name)
    assert_recovered(tiny)
    tiny.ok("rm", name)
    assert_recovered(tiny)


@pytest.mark.parametrize("seed", RM_SEEDS)
def test_sigkill_during_rm_leaves_the_sandbox_intact_or_gone(tiny: CLI, seed: int) -> None:
    name = f"killed-rm-{seed}"
    tiny.ok("create", "tiny", "--name", name)
    # Enough files that removing them takes a moment.
    tiny.ok("exec", name, "sh", "-c", "echo precious > /data && mkdir /many && cd /many && "
            "seq 1 20000 | xargs touch")
    kill_after(tiny.popen("rm", name), seed, 0.02, 0.5)
    assert_nothing_running_or_mounted(tiny)
    _, found = doctor(tiny)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    if name in sandboxes(tiny):  # intact: its data is all there
        assert tiny.ok("exec", name, "sh", "-c", "cat /data; ls /many | wc -l").out.split() == ["precious", "20000"]
        tiny.ok("rm", name)
    else:  # gone: not half there
        assert not (tiny.store / "sandboxes" / name).exists()
        tiny.ok("create", "tiny", "--name", name)  # the next command; the name is free
        assert tiny("exec", name, "cat", "/data").code != 0  # a new sandbox, not the old one's data
        tiny.ok("rm", name)
    assert name not in sandboxes(tiny)
    assert_recovered(tiny)


@pytest.mark.parametrize("seed", EXEC_SEEDS)
def test_sigkill_during_exec_keeps_the_sandbox_and_its_data(tiny: CLI, seed: int) -> None:
    name = f"killed-exec-{seed}"
    tag = 7000 + seed
    tiny.ok("create", "tiny", "--name", name)
    tiny.ok("exec", name, "sh", "-c", "echo precious > /data")
    proc = tiny.popen("exec", name, "sh", "-c", f"echo more >> /data; exec sleep {tag}")
    kill_after(proc, seed, 0.05, 0.6)
    # The command dies with its manager; nothing stays mounted or running.
    assert wait_until(lambda: subprocess.run(["pgrep", "-x", "-f", f"sleep {tag}"]).returncode != 0)
    assert_nothing_running_or_mounted(tiny)
    _, found = doctor(tiny)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    # The next command gets in (no "busy" from a dead holder) and finds the data.
    lines = tiny.ok("exec", name, "cat", "/data").out.splitlines()
    assert lines in (["precious"], ["precious", "more"]), lines
    assert_recovered(tiny)
    tiny.ok("rm", name)
    assert_recovered(tiny)
