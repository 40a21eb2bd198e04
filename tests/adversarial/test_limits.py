"""Attack 9: a fork bomb and a memory hog, held by the run's cgroup; the CPU limit; limits' plumbing.

Both attacks are bounded however they end: the fork bomb's own shell exits after
a few seconds (ending the PID namespace and everything in it), every run has a
timeout, and the test kills the manager if that passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from sandboxmgr import cgroups
from tests.adversarial.conftest import attempts, need_controllers
from tests.conftest import CLI, ConcurrentBuild, Result

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"
# The bomb's shell keeps a sleep as its anchor: when the sleep ends, the shell
# exits, PID 1 sees its command end, and the kernel kills the rest of the namespace.
FORK_BOMB = "sleep {seconds} & anchor=$!; bomb() {{ bomb | bomb & }}; bomb; wait $anchor"


def bounded(cli: CLI, *args: str, timeout: float = 90) -> tuple[Result, subprocess.Popen[str]]:
    proc = cli.popen(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{args} did not end within {timeout}s: {err[-2000:]}")
    return Result(proc.returncode, out, err), proc


def test_a_fork_bomb_stops_at_the_pids_limit_and_the_host_stays_responsive(cli: CLI, bookworm: ConcurrentBuild,
                                                                           tmp_path: Path) -> None:
    need_controllers("pids")
    host_canary = subprocess.Popen(["sleep", "300"])
    proc = cli.popen("run", "--pids-limit", "64", IMAGE, "sh", "-c", FORK_BOMB.format(seconds=4))
    try:
        time.sleep(1.5)
        # While the bomb goes off: the host still starts processes at once, and the
        # run's cgroup holds no more than its limit.
        started = time.monotonic()
        subprocess.run(["true"], check=True)
        assert time.monotonic() - started < 2.0
        groups = [g for g in cgroups.find_run_groups() if g.path.name.startswith(f"{proc.pid}-")]
        assert groups, "the run has no cgroup"
        for group in groups:
            current = group.path / "pids.current"
            if current.exists():
                assert int(current.read_text()) <= 64
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "the process limit (64) was reached" in err and "forks were refused" in err, err
    assert host_canary.poll() is None
    host_canary.kill()
    host_canary.wait()
    # Everything of the bomb is gone, and so is its cgroup.
    assert not [g for g in cgroups.find_run_groups() if g.path.name.startswith(f"{proc.pid}-")]
    assert subprocess.run(["pgrep", "-f", "bomb"], capture_output=True).stdout.strip() == b""


def test_a_memory_hog_is_oom_killed_inside_its_cgroup_only(cli: CLI, bookworm: ConcurrentBuild,
                                                           attack_dir: Path) -> None:
    need_controllers("memory")
    host_canary = subprocess.Popen(["sleep", "300"])
    try:
        result, proc = bounded(cli, "run", "--memory", "64M", "-v", f"{attack_dir}:/attack:ro", IMAGE,
                               "/attack/attack", "hog", "200")
        assert result.code == 128 + 9, str(result)
        assert "hog: survived" not in result.out
        assert "out of memory: the kernel killed 1 process at the memory limit (64M); exit status 137" \
            in result.err, result.err
        assert result.err.count("sandboxmgr:") == 1
        # What the hog did not take from the host: the canary, the test itself, and the cgroup is gone.
        assert host_canary.poll() is None
        assert not [g for g in cgroups.find_run_groups() if g.path.name.startswith(f"{proc.pid}-")]
        # The shell way from the issue: a pipe whose reader keeps 300M.
        shell, _ = bounded(cli, "run", "--memory", "64M", IMAGE, "sh", "-c", "head -c 300M /dev/zero | tail")
        assert shell.code == 137 and "out of memory" in shell.err, str(shell)
    finally:
        host_canary.kill()
        host_canary.wait()


def test_cpus_limits_cpu_time(cli: CLI, bookworm: ConcurrentBuild) -> None:
    need_controllers("cpu")
    script = 'timeout 2 bash -c "while :; do :; done"; times'
    result, _ = bounded(cli, "run", "--cpus", "0.5", IMAGE, "bash", "-c", script)
    assert result.code == 0, str(result)
    # `times`: the shell's user/sys, then its children's: the loop's CPU time over 2 wall seconds.
    user = result.out.splitlines()[1].split()[0]
    minutes, seconds = user.rstrip("s").split("m")
    used = int(minutes) * 60 + float(seconds)
    assert 0.3 < used < 1.4, result.out


def test_limits_of_a_named_sandbox_persist_and_exec_can_change_them(cli: CLI, bookworm: ConcurrentBuild,
                                                                    attack_dir: Path) -> None:
    need_controllers("memory", "pids")
    name = "limited"
    cli.ok("create", IMAGE, "--name", name, "--memory", "64M", "--pids-limit", "128", "-v",
           f"{attack_dir}:/attack:ro")
    try:
        (info,) = json.loads(cli.ok("inspect", name).out)
        assert info["settings"]["limits"] == {"memory": 64 << 20, "pids": 128}
        hog = cli("exec", name, "/attack/attack", "hog", "200")
        assert hog.code == 137 and "out of memory" in hog.err, str(hog)
        # A bigger limit for one command: the hog finishes.
        bigger = cli("exec", "--memory", "512M", name, "/attack/attack", "hog", "200")
        assert bigger.code == 0 and "hog: survived" in bigger.out, str(bigger)
    finally:
        cli.ok("rm", name)


def test_a_profiles_limits_apply_and_do_not_change_the_image(cli: CLI, bookworm: ConcurrentBuild,
                                                             configs_dir: Path) -> None:
    need_controllers("pids")
    (configs_dir / "bookworm-limited.yaml").write_text(
        "extends: debian-bookworm\nlimits: {pids: 40, memory: 256M}\n")
    try:
        result, _ = bounded(cli, "run", "bookworm-limited", "sh", "-c", FORK_BOMB.format(seconds=2))
        assert "the process limit (40) was reached" in result.err, str(result)
        images = {i["profile"]: i for i in json.loads(cli.ok("images", "--json").out)}
        # Limits are runtime settings: the same layers as the parent's image.
        assert [layer["key"] for layer in images["bookworm-limited"]["layers"]] == \
            [layer["key"] for layer in images[IMAGE]["layers"]]
    finally:
        (configs_dir / "bookworm-limited.yaml").unlink()
        cli("rmi", "bookworm-limited")


def test_bad_limits_are_clean_errors(cli: CLI, bookworm: ConcurrentBuild) -> None:
    cases = {
        ("--memory", "lots"): "--memory: 'lots' is not a size like 512M or 2G",
        ("--memory", "1M"): "below the minimum of 16M",
        ("--pids-limit", "-1"): "--pids-limit: '-1' is not a whole number of processes",
        ("--cpus", "nan"): "--cpus: 'nan' is not between",
        ("--cpus", str((os.cpu_count() or 1) + 1)): f"this machine has only {os.cpu_count()} CPUs",
    }
    for (option, value), message in cases.items():
        result = cli("run", option, value, IMAGE, "true")
        assert result.code == 125, (option, value, str(result))
        assert message in result.err and "hint:" in result.err, (option, value, result.err)


def test_the_attack_binary_reports_like_the_other_tests_expect(cli: CLI, bookworm: ConcurrentBuild,
                                                               attack_dir: Path) -> None:
    """A sanity check of the instrument: without limits the hog survives."""
    result = cli("run", "-v", f"{attack_dir}:/attack:ro", IMAGE, "/attack/attack", "hog", "32")
    assert result.code == 0 and attempts(result) == {"hog": "survived"}, str(result)
