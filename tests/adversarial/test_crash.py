"""Attack 6: SIGKILL (and SIGTERM) of the manager at chosen points of `build`, `run`, `create`,
`rm` and `exec`.

Each kill is aimed at a phase of the command - a build in progress, a run whose cgroup exists,
a sandbox being made or removed, a command entering or running - by watching for that phase
(polling, or inotify where it lasts only milliseconds) rather than by a blind delay from the
start (starting the CLI alone takes longer than most of them), and the test checks that the
kill landed in it. Fixed seeds choose the delays within a phase, so a failure can be replayed.
After each kill: no process of the build or the sandbox is left, nothing is mounted under the
store, no half-built image is listed, a dead run's cgroup holds no process; then the next
command must recover - and after it `doctor` finds nothing. The builds are of the Tiny Distro
(a second or so), so the kills land in the bootstrap, the package install and the publishing alike.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import select
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sandboxmgr import cgroups, mountinfo
from tests.adversarial.conftest import doctor, fresh_tiny, need_controllers, processes_rooted_in, wait_until
from tests.conftest import CLI
from tests.rpmrepo import RpmRepo

pytestmark = [pytest.mark.adversarial, pytest.mark.root]

# The Tiny Distro's image has two layers (the bootstrap, then the packages), each built in a
# directory of tmp/ (about 1.1 s, then 0.8 s here): each case kills the build a seeded delay
# after that layer's directory appears, in its bootstrap, install or publishing.
BUILD_CASES = [(1, 14), (1, 7), (1, 9), (2, 5), (2, 6), (2, 20)]
BUILD_DELAY = {1: (0.0, 0.7), 2: (0.0, 0.5)}
# A run with limits: killed once its cgroup exists, before or just as the command starts
# (about 30 ms later), or once the command runs.
RUN_CASES = [("cgroup", 1), ("cgroup", 2), ("cgroup", 3), ("running", 4), ("running", 5)]


def assert_nothing_running_or_mounted(cli: CLI) -> None:
    assert wait_until(lambda: not processes_rooted_in(cli.store), timeout=15), \
        f"processes left in the store: {processes_rooted_in(cli.store)}"
    assert not mountinfo.mounts_under(cli.store)


def kill_in_phase(proc: subprocess.Popen[str], phase: Callable[[], bool], what: str, delay: float = 0.0) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``phase()`` first holds, checking that it still
    runs and ``phase()`` still holds just before the kill: the kill landed in that phase."""
    assert wait_until(lambda: phase() or proc.poll() is not None, timeout=120, step=0.002), f"never {what}"
    assert proc.poll() is None, f"the command ended before it was {what}: {proc.communicate()}"
    time.sleep(delay)
    landed = proc.poll() is None and phase()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    assert landed, f"the kill came after the command was {what}"


def building_layer(cli: CLI, number: int) -> Callable[[], bool]:
    """Whether the build is making its ``number``th layer (1 is the first) in tmp/."""
    seen: list[str] = []

    def phase() -> bool:
        tmp = cli.store / "tmp"
        now = [entry.name for entry in tmp.glob("layer-*")] if tmp.is_dir() else []
        seen.extend(name for name in now if name not in seen)
        return len(seen) == number and seen[-1] in now

    return phase


@pytest.mark.parametrize(("layer", "seed"), BUILD_CASES)
def test_sigkill_during_build_leaves_nothing_half_built(tmp_path: Path, rpm_repo: RpmRepo, layer: int,
                                                        seed: int) -> None:
    cli = fresh_tiny(tmp_path, rpm_repo)
    proc = cli.popen("build", "tiny")
    kill_in_phase(proc, building_layer(cli, layer), f"building layer {layer}",
                  random.Random(seed).uniform(*BUILD_DELAY[layer]))
    assert_nothing_running_or_mounted(cli)
    images = json.loads(cli.ok("images", "--json").out) if (cli.store / "images").exists() else []
    assert images == [], images  # killed while the layer was in tmp/: no image was recorded
    # Whatever the kill left is a leftover (tmp, lock), not something doctor cannot explain.
    _, found = doctor(cli)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    # The next command recovers: it removes the leftovers and builds (or reuses) the image.
    cli.ok("build", "tiny")
    assert cli.ok("run", "tiny", "tiny-hello").out.strip() == "hello from a dependency"
    assert doctor(cli)[1] == []
    assert list((cli.store / "tmp").iterdir()) == []


def command_runs(tag: int) -> bool:
    return subprocess.run(["pgrep", "-x", "-f", f"sleep {tag}"], capture_output=True).returncode == 0


@pytest.mark.parametrize(("phase", "seed"), RUN_CASES)
def test_sigkill_during_a_run_with_limits_leaves_no_process_mount_or_cgroup(tiny: CLI, phase: str,
                                                                            seed: int) -> None:
    need_controllers("memory", "pids")
    tag = 6000 + seed
    proc = tiny.popen("run", "--memory", "64M", "--pids-limit", "64", "tiny", "sh", "-c", f"exec sleep {tag}")
    manager = proc.pid

    def dead_runs_cgroups() -> list[cgroups.RunGroup]:
        return [g for g in cgroups.find_run_groups() if g.path.name.startswith(f"{manager}-")]

    if phase == "cgroup":
        kill_in_phase(proc, lambda: bool(dead_runs_cgroups()), "in its cgroup", random.Random(seed).uniform(0, 0.03))
    else:
        kill_in_phase(proc, lambda: command_runs(tag), "running the command", random.Random(seed).uniform(0, 0.2))
    assert wait_until(lambda: not command_runs(tag))
    assert_nothing_running_or_mounted(tiny)
    # Empty once the host's init has reaped the sandbox's PID 1 (an orphan when its manager died).
    assert wait_until(lambda: all(not g.procs for g in dead_runs_cgroups()), timeout=10), dead_runs_cgroups()
    # The next run with limits removes the dead run's cgroups and directory.
    tiny.ok("run", "--memory", "64M", "--pids-limit", "64", "tiny", "true")
    assert not dead_runs_cgroups()
    assert doctor(tiny)[1] == []


def mount_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def processes_in_mount_namespace(inode: int) -> list[int]:
    return [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and mount_namespace(int(pid)) == inode]


def test_sigterm_to_the_manager_kills_the_command_and_its_mount_namespace(tiny: CLI) -> None:
    """The sandbox's mounts live in its own mount namespace, which the host's mount table does not
    show: what proves them gone is that no process is left in that namespace."""
    tag = 6100
    # Without pipes to the test: a sandbox left running must not keep the test waiting for their end.
    proc = subprocess.Popen(tiny.argv("run", "tiny", "sh", "-c", f"exec sleep {tag}"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: command_runs(tag) or proc.poll() is not None, timeout=120), "never started"
        (command,) = map(int, subprocess.run(["pgrep", "-x", "-f", f"sleep {tag}"], capture_output=True,
                                             text=True).stdout.split())
        namespace = mount_namespace(command)
        assert namespace is not None and namespace != mount_namespace(os.getpid())
        assert command in processes_in_mount_namespace(namespace)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert wait_until(lambda: mount_namespace(command) != namespace, timeout=10), f"{command} still runs"
    assert wait_until(lambda: not processes_in_mount_namespace(namespace), timeout=10), \
        f"processes left in the sandbox's mount namespace: {processes_in_mount_namespace(namespace)}"
    assert_nothing_running_or_mounted(tiny)
    assert doctor(tiny)[1] == []


# --- create, rm, exec ---------------------------------------------------------------------------
# A create's work, and the moment an rm or an exec takes the sandbox, last milliseconds: those
# kills are sent on the inotify event that starts the phase, and the test checks the command was
# still running then. The longer phases (an rm deleting 20000 files, a command running) get a
# seeded delay within them. Those commands run niced, so that the test gets the CPU first.
CREATE_PHASES = ["claiming", "making", "made"]
RM_CASES = [("locking", 0), ("moved", 0), ("deleting", 14), ("deleting", 4)]
EXEC_CASES = [("entering", 0), ("running", 1), ("running", 4)]
IN_OPEN, IN_MOVED_TO, IN_CREATE = 0x20, 0x80, 0x100


@contextmanager
def watching(directory: Path, mask: int) -> Iterator[Callable[[subprocess.Popen[str], Callable[[str], bool]], bool]]:
    """inotify on ``directory``: yields ``wait(proc, wanted)``, which returns True on the first
    event of ``mask`` about an entry whose name is ``wanted``, False if ``proc`` ends first."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(directory), mask) >= 0, ctypes.get_errno()

    def wait(proc: subprocess.Popen[str], wanted: Callable[[str], bool]) -> bool:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            data = os.read(fd, 65536)
            offset = 0
            while offset < len(data):
                size = struct.unpack_from("iIII", data, offset)[3]
                name = data[offset + 16:offset + 16 + size].rstrip(b"\0").decode()
                offset += 16 + size
                if wanted(name):
                    return True
        return False

    try:
        yield wait
    finally:
        os.close(fd)


def niced(cli: CLI, *args: str) -> subprocess.Popen[str]:
    """``cli.popen(*args)`` at the lowest CPU priority: on a busy machine the test, woken by the
    event it waits for, still runs before the command's next few milliseconds of work."""
    return subprocess.Popen(cli.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, preexec_fn=lambda: os.nice(19))


def kill_on_event(start: Callable[[], subprocess.Popen[str]], directory: Path, mask: int,
                  wanted: Callable[[str], bool], what: str) -> None:
    """Start a command with ``start`` and SIGKILL it as soon as an event of ``mask`` about
    ``wanted`` comes from ``directory`` (watched from before the start)."""
    with watching(directory, mask) as wait:
        proc = start()
        seen = wait(proc, wanted)
        landed = seen and proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    assert landed, f"the command ended before it was {what}"


def sandboxes(cli: CLI) -> list[str]:
    return [row["name"] for row in json.loads(cli.ok("ls", "--json").out)]


def assert_recovered(cli: CLI) -> None:
    """After the next command: nothing in tmp/, no stale lock or mount (doctor)."""
    assert list((cli.store / "tmp").iterdir()) == []
    assert doctor(cli)[1] == []


@pytest.mark.parametrize("phase", CREATE_PHASES)
def test_sigkill_during_create_leaves_the_sandbox_whole_or_absent(tiny: CLI, phase: str) -> None:
    name = f"killed-create-{phase}"
    def start() -> subprocess.Popen[str]:
        return niced(tiny, "create", "tiny", "--name", name)

    if phase == "claiming":  # its temporary directory's lock is made, the directory not yet
        kill_on_event(start, tiny.store / "locks", IN_CREATE, lambda n: n.startswith(f"tmp-create-{name}-"),
                      "claiming its temporary directory")
    elif phase == "making":  # the directory is made; its contents and the rename follow
        kill_on_event(start, tiny.store / "tmp", IN_CREATE, lambda n: n.startswith(f"create-{name}-"),
                      "making the sandbox")
    else:  # renamed into sandboxes/, the command not finished yet
        kill_on_event(start, tiny.store / "sandboxes", IN_MOVED_TO, lambda n: n == name, "moving the sandbox in")
    assert_nothing_running_or_mounted(tiny)
    _, found = doctor(tiny)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    if name in sandboxes(tiny):  # whole: usable as it is
        place = tiny.store / "sandboxes" / name
        assert all((place / sub).is_dir() for sub in ("upper", "work", "root")), list(place.iterdir())
        assert tiny.ok("exec", name, "tiny-hello").out.strip() == "hello from a dependency"
    else:  # absent: nothing of it, and the name is free
        assert phase != "made", "renamed into sandboxes/, yet not listed"
        assert not (tiny.store / "sandboxes" / name).exists()
        tiny.ok("create", "tiny", "--name", name)
    assert_recovered(tiny)
    tiny.ok("rm", name)
    assert_recovered(tiny)


@pytest.mark.parametrize(("phase", "seed"), RM_CASES)
def test_sigkill_during_rm_leaves_the_sandbox_intact_or_gone(tiny: CLI, phase: str, seed: int) -> None:
    name = f"killed-rm-{phase}-{seed}"
    tiny.ok("create", "tiny", "--name", name)
    # Enough files that removing them takes a moment.
    tiny.ok("exec", name, "sh", "-c", "echo precious > /data && mkdir /many && cd /many && "
            "seq 1 20000 | xargs touch")
    def start() -> subprocess.Popen[str]:
        return niced(tiny, "rm", name)

    if phase == "locking":  # taking the sandbox's lock, before its tree leaves sandboxes/
        kill_on_event(start, tiny.store / "locks", IN_OPEN, lambda n: n == f"sandbox-{name}.lock",
                      "taking the sandbox's lock")
    elif phase == "moved":  # the tree just moved into tmp/, nothing deleted yet
        kill_on_event(start, tiny.store / "tmp", IN_MOVED_TO, lambda n: n.startswith(f"rm-{name}-"),
                      "moving the sandbox out")
    else:  # deleting the tree in tmp/
        kill_in_phase(start(), lambda: any((tiny.store / "tmp").glob(f"rm-{name}-*")), "deleting the sandbox",
                      random.Random(seed).uniform(0.02, 0.15))
    assert_nothing_running_or_mounted(tiny)
    _, found = doctor(tiny)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    if name in sandboxes(tiny):  # intact: its data is all there
        assert phase == "locking", "moved out of sandboxes/, yet still listed"
        assert tiny.ok("exec", name, "sh", "-c", "cat /data; ls /many | wc -l").out.split() == ["precious", "20000"]
        tiny.ok("rm", name)
    else:  # gone: not half there
        assert not (tiny.store / "sandboxes" / name).exists()
        tiny.ok("create", "tiny", "--name", name)  # the next command; the name is free
        assert tiny("exec", name, "cat", "/data").code != 0  # a new sandbox, not the old one's data
        tiny.ok("rm", name)
    assert name not in sandboxes(tiny)
    assert_recovered(tiny)


@pytest.mark.parametrize(("phase", "seed"), EXEC_CASES)
def test_sigkill_during_exec_keeps_the_sandbox_and_its_data(tiny: CLI, phase: str, seed: int) -> None:
    name = f"killed-exec-{phase}-{seed}"
    tag = 7000 + seed
    tiny.ok("create", "tiny", "--name", name)
    tiny.ok("exec", name, "sh", "-c", "echo precious > /data")
    def start() -> subprocess.Popen[str]:
        return niced(tiny, "exec", name, "sh", "-c", f"echo more >> /data; exec sleep {tag}")

    if phase == "entering":  # the sandbox's lock taken, its mounts and namespaces not made yet
        kill_on_event(start, tiny.store / "locks", IN_OPEN, lambda n: n == f"sandbox-{name}.lock",
                      "taking the sandbox's lock")
    else:
        kill_in_phase(start(), lambda: command_runs(tag), "running the command",
                      random.Random(seed).uniform(0, 0.2))
    # The command dies with its manager; nothing stays mounted or running.
    assert wait_until(lambda: not command_runs(tag))
    assert_nothing_running_or_mounted(tiny)
    _, found = doctor(tiny)
    assert {f["kind"] for f in found} <= {"tmp", "lock"}, found
    # The next command gets in (no "busy" from a dead holder) and finds the data: the command's
    # line only if it was killed while running.
    lines = tiny.ok("exec", name, "cat", "/data").out.splitlines()
    assert lines == (["precious"] if phase == "entering" else ["precious", "more"]), lines
    assert_recovered(tiny)
    tiny.ok("rm", name)
    assert_recovered(tiny)
