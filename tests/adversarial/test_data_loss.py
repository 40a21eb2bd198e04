"""Attack 5: losing the host's data through a crash and the commands that clean up after it.

A host directory with a canary is bind-mounted into a sandbox; the manager is
killed with SIGKILL mid-run; then every command that deletes - rm, rmi, prune,
doctor --fix - runs over what is left. The canary must survive every path
(the `canary` fixture checks it at the end of each test), including when the
store itself is given through a symlink.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from sandboxmgr import mountinfo
from tests.adversarial.conftest import doctor, fresh_tiny, wait_until
from tests.conftest import CLI
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root]


def sleeping(tag: int) -> bool:
    return subprocess.run(["pgrep", "-x", "-f", f"sleep {tag}"], capture_output=True).returncode == 0


def kill_mid_run(cli: CLI, canary: Path, tag: int, *options: str) -> None:
    """Start a run that writes through the bind mount, wait until it did, SIGKILL the manager."""
    proc = cli.popen("run", *options, "-v", f"{canary}:/data", "tiny", "sh", "-c",
                     f"echo written > /data/from-sandbox; exec sleep {tag}")
    try:
        assert wait_until(lambda: (canary / "from-sandbox").exists() and sleeping(tag)), proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
    # An ephemeral sandbox dies with its manager (PDEATHSIG on its PID 1); a named one is stopped
    # by its monitor once no command holds it (live.py), and then reads as stopped.
    assert wait_until(lambda: not sleeping(tag)), "the sandbox outlived its killed manager"
    if "--name" in options:
        name = options[options.index("--name") + 1]
        assert wait_until(lambda: all(r["state"] == "stopped" for r in json.loads(cli.ok("ls", "--json").out)
                                      if r["name"] == name)), "the named sandbox still runs"


def test_sigkill_mid_run_then_rm_and_doctor_keep_the_bind_mounted_canary(tiny: CLI, canary: Path) -> None:
    kill_mid_run(tiny, canary, 4711, "--name", "killed")
    assert not mountinfo.mounts_under(canary)
    tiny.ok("rm", "killed")
    _, found = doctor(tiny, "--fix")
    assert all(f["fixed"] for f in found), found
    assert doctor(tiny)[1] == []
    assert (canary / "from-sandbox").read_text() == "written\n"


def test_a_mount_a_crash_left_in_a_dead_runs_directory_is_detached_not_deleted_through(
        tiny: CLI, canary: Path) -> None:
    """As if an older version had crashed with a bind mount on the host: doctor --fix
    must detach it, then remove the directory - never delete the canary through it."""
    dead = tiny.store / "tmp" / "run-0123456789ab"
    target = dead / "root" / "data"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(canary), str(target)], check=True)
    try:
        result, found = doctor(tiny)
        assert result.code == 1
        kinds = {(f["kind"], f["what"]) for f in found}
        assert ("mount", str(target)) in kinds and ("tmp", str(dead)) in kinds, found
        result, found = doctor(tiny, "--fix")
        assert result.code == 0 and all(f["fixed"] for f in found), found
        assert not dead.exists()
        assert doctor(tiny)[1] == []
    finally:
        if mountinfo.mounts_under(target):
            subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.mark.parametrize("through_symlink", [False, True])
def test_rm_rmi_prune_doctor_after_a_crash_keep_the_canary(tmp_path: Path, rpm_repo: RpmRepo, canary: Path,
                                                           through_symlink: bool) -> None:
    cli = fresh_tiny(tmp_path / "base", rpm_repo)
    if through_symlink:
        real = tmp_path / "real-store"
        real.mkdir()
        (tmp_path / "store-link").symlink_to(real)
        cli = CLI(tmp_path / "store-link", cli.configs)
    cli.ok("build", "tiny")
    kill_mid_run(cli, canary, 4712, "--name", "victim", "--pids-limit", "64")
    kill_mid_run(cli, canary, 4713)  # an ephemeral run: its directory stays in tmp/ until cleaned
    # A bind mount a crash left inside an image layer: rmi and prune must detach it first.
    (image,) = json.loads(cli.ok("images", "--json").out)
    layer_dir = Path(str(image["layers"][-1]["path"]))
    inside_layer = layer_dir / "canary-mount"
    inside_layer.mkdir()
    subprocess.run(["mount", "--bind", str(canary), str(inside_layer)], check=True)
    try:
        refused = cli("rmi", "tiny")
        assert refused.code == 125 and "victim" in refused.err  # still used by the sandbox
        cli.ok("rm", "victim")
        cli.ok("rmi", "tiny")
        if cli("prune", "--help").code == 0:
            cli.ok("prune")
        cli.ok("doctor", "--fix")
        assert doctor(cli)[1] == []
        assert not mountinfo.mounts_under(cli.store)
    finally:
        if mountinfo.mounts_under(inside_layer):
            subprocess.run(["umount", "-l", str(inside_layer)], check=False)
