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
