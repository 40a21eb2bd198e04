"""Limits as data, the cgroup hierarchies of a machine, what a run reports (no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxmgr import cgroups, limits, runcgroup
from sandboxmgr.cgroups import Hierarchy, RunGroup, choose, hierarchies
from sandboxmgr.errors import SandboxError
from sandboxmgr.limits import Limits
from sandboxmgr.runcgroup import RunCgroup

# This machine's layout (systemd's "hybrid"): v1 controllers, an empty v2 hierarchy.
HYBRID_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
32 30 0:27 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,xattr,name=systemd
33 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
35 30 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,pids
"""
HYBRID_CGROUP = """\
12:pids:/user.slice/user-0.slice/session-1.scope
4:memory:/user.slice/user-0.slice/session-1.scope
3:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/user-0.slice/session-1.scope
0::/user.slice/user-0.slice/session-1.scope
"""
V2_MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
V2_CGROUP = "0::/system.slice/build.service\n"


def fake_sys(tmp_path: Path, unified: str, controllers: str) -> Path:
    """A directory standing in for / with the v2 hierarchy's cgroup.controllers."""
    (tmp_path / unified.lstrip("/")).mkdir(parents=True)
    (tmp_path / unified.lstrip("/") / "cgroup.controllers").write_text(controllers + "\n")
    return tmp_path


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 << 20), ("512m", 512 << 20), ("1g", 1 << 30), ("1.5GiB", 3 << 29), ("65536k", 64 << 20),
    ("16MB", 16 << 20), (str(64 << 20), 64 << 20), (64 << 20, 64 << 20), ("2 G", 2 << 30),
])
def test_memory_sizes_are_read_like_docker(text: str | int, size: int) -> None:
    assert limits.parse_memory(text) == size


@pytest.mark.parametrize(("value", "message"), [
    ("lots", "is not a size"), ("1M", "below the minimum"), ("-5M", "is not a size"), (True, "is not a size"),
    (1.5, "is not a size"), ("9" * 400 + ".5G", "too large"), ("1e3M", "is not a size"), (None, "is not a size"),
])
def test_bad_memory_sizes_say_why(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        limits.parse_memory(value)


def test_pids_and_cpus() -> None:
    assert limits.parse_pids(64) == 64 and limits.parse_pids("256") == 256
    assert limits.parse_cpus("1.5") == 1.5 and limits.parse_cpus(2) == 2.0
    for bad in (0, 1, -1, "x", True, 2.5, 10 ** 9):
        with pytest.raises(ValueError):
            limits.parse_pids(bad)
    for bad in (0, "0.001", "nan", "inf", float("nan"), 10 ** 400, "many", False, 2000):
        with pytest.raises(ValueError):
            limits.parse_cpus(bad)


def test_limits_merge_describe_and_round_trip() -> None:
    saved = Limits(memory=512 << 20, pids=256)
    override = Limits(pids=64, cpus=1.5)
    merged = saved.merged(override)
    assert merged == Limits(memory=512 << 20, pids=64, cpus=1.5)
    assert merged.describe() == "memory 512M, pids 64, cpus 1.5"
    assert merged.controllers() == ("memory", "pids", "cpu")
    assert Limits.from_json(merged.to_json()) == merged
    assert Limits().empty and Limits().to_json() == {} and Limits.from_json(None) == Limits()
    assert limits.format_bytes(1536 << 20) == "1536M" and limits.format_bytes(1_500_000) == "1.4M"
    assert limits.format_bytes(100) == "100B"


def test_the_command_line_names_the_wrong_option() -> None:
    assert Limits.parse("64M", "32", "0.5") == Limits(64 << 20, 32, 0.5)
    assert Limits.parse() == Limits()
    with pytest.raises(SandboxError, match="--pids-limit: 'x'") as caught:
        Limits.parse("64M", "x", None)
    assert caught.value.hint and "--memory 512M" in caught.value.hint


def test_a_hybrid_machine_uses_v1_for_every_controller(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, "/sys/fs/cgroup/unified", "")
    found = hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP, sys_root)
    versions = {h.mount.name: (h.version, h.own) for h in found}
    assert versions["memory"] == (1, "/user.slice/user-0.slice/session-1.scope")
    assert versions["cpu,cpuacct"] == (1, "/user.slice")
    assert versions["unified"][0] == 2
    plan = choose(("memory", "pids", "cpu"), found)
    assert sorted((h.mount.name, tuple(c)) for h, c in plan.items()) == [
        ("cpu,cpuacct", ("cpu",)), ("memory", ("memory",)), ("pids", ("pids",))]
    # v1: below the caller's own cgroup, whose limits keep applying.
    parent = next(h for h in plan if h.mount.name == "memory").run_parent
    assert parent == sys_root / "sys/fs/cgroup/memory/user.slice/user-0.slice/session-1.scope/sandboxmgr"


def test_v2_is_used_where_it_offers_the_controller(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, "/sys/fs/cgroup", "cpuset cpu io memory pids")
    found = hierarchies(V2_MOUNTINFO, V2_CGROUP, sys_root)
    (unified,) = found
    assert unified.version == 2 and unified.own == "/system.slice/build.service"
    assert choose(("memory", "pids"), found) == {unified: ["memory", "pids"]}
    # v2: not below the caller's cgroup (it has processes: no controllers for its children).
    assert unified.run_parent == sys_root / "sys/fs/cgroup/sandboxmgr"


def test_a_missing_controller_is_a_clear_error(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, "/sys/fs/cgroup", "cpu io")
    found = hierarchies(V2_MOUNTINFO, V2_CGROUP, sys_root)
    with pytest.raises(SandboxError, match="no cgroup hierarchy has the pids controller") as caught:
        choose(("pids",), found)
    assert "does not offer it (cpu io)" in caught.value.message
    assert caught.value.hint and "run without that limit" in caught.value.hint
    with pytest.raises(SandboxError, match="no cgroup v2 hierarchy is mounted"):
        choose(("memory",), [])


def test_a_containers_subtree_mount_is_followed(tmp_path: Path) -> None:
    mountinfo = "30 27 0:29 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    found = hierarchies(mountinfo, "4:memory:/docker/abc/inner\n", tmp_path)
    assert found[0].own == "/inner"


def test_the_report_names_what_the_limits_did(tmp_path: Path) -> None:
    memory, pids = tmp_path / "memory", tmp_path / "pids"
    memory.mkdir()
    pids.mkdir()
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (pids / "pids.events").write_text("max 17\n")
    run = RunCgroup(Limits(memory=64 << 20, pids=64), {memory: 1, pids: 1}, {"memory": memory, "pids": pids})
    assert run.report(137) == ("out of memory: the kernel killed 2 processes at the memory limit (64M); "
                               "the process limit (64) was reached: 17 forks were refused; exit status 137")
    (memory / "memory.oom_control").write_text("oom_kill 0\n")
    (pids / "pids.events").write_text("max 0\n")
    assert run.report(0) is None
    # v2 keeps the OOM kills in memory.events.
    (memory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    v2 = RunCgroup(Limits(memory=64 << 20), {memory: 2}, {"memory": memory})
    assert v2.report(137) == "out of memory: the kernel killed 1 process at the memory limit (64M); exit status 137"


def test_run_cgroups_of_dead_managers_are_found(tmp_path: Path) -> None:
    start = cgroups.process_start_time(os.getpid())
    parent = tmp_path / "pids" / "some.slice" / cgroups.GROUP_DIR
    alive = parent / f"{os.getpid()}-{start}-abc123"
    dead = parent / f"{os.getpid()}-{(start or 0) + 1}-def456"  # same pid, another process (pid reuse)
    gone = parent / "999999999-5-0a0b0c"
    for directory in (alive, dead, gone):
        directory.mkdir(parents=True)
        (directory / "cgroup.procs").write_text("")
    (parent / "not-a-run").mkdir()
    found = cgroups.find_run_groups([Hierarchy(1, tmp_path / "pids", frozenset({"pids"}), "/")])
    assert [(g.path.name, g.manager_alive) for g in found] == [
        (alive.name, True), (dead.name, False), (gone.name, False)]
    assert isinstance(found[0], RunGroup) and found[0].procs == ()


def test_a_v2_run_enables_its_controllers_from_the_root_and_writes_its_limits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The v2 sequence on a fake cgroupfs (this machine has no v2 controllers to try it on)."""
    root = tmp_path / "cgroup"
    (root / "sandboxmgr").mkdir(parents=True)
    for directory in (root, root / "sandboxmgr"):
        (directory / "cgroup.subtree_control").write_text("cpu\n")
    written: dict[str, str] = {}

    def write(path: Path, value: str) -> None:  # cgroupfs has the files; a plain directory does not
        written[str(path.relative_to(root))] = value
        path.write_text(value)

    monkeypatch.setattr(runcgroup, "write", write)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    unified = Hierarchy(2, root, frozenset({"cpu", "memory", "pids"}), "/user.slice/session-1.scope")
    run = RunCgroup.create(Limits(memory=64 << 20, pids=64, cpus=0.5), [unified])
    (directory,) = run.directories
    assert directory.parent == root / "sandboxmgr" and run.directories[directory] == 2
    assert written.pop("cgroup.subtree_control") == "+memory +pids"  # cpu was on already
    assert written.pop("sandboxmgr/cgroup.subtree_control") == "+memory +pids"
    name = directory.name
    assert written == {f"sandboxmgr/{name}/memory.max": str(64 << 20), f"sandboxmgr/{name}/pids.max": "64",
                       f"sandboxmgr/{name}/cpu.max": "50000 100000"}
    assert cgroups.manager_alive(name)


def test_a_v2_cgroup_with_processes_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("")

    def busy(path: Path, value: str) -> None:
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(runcgroup, "write", busy)
    unified = Hierarchy(2, root, frozenset({"memory"}), "/")
    with pytest.raises(SandboxError, match="it has processes of its own") as caught:
        RunCgroup.create(Limits(memory=64 << 20), [unified])
    assert caught.value.hint and "run without limits" in caught.value.hint
