"""Fixtures of the adversarial suite: the attack binary, a host-only marker, the Tiny Distro.

The attacks are one static C program (attack.c) built with the host's gcc: no
image has a compiler, and a static binary runs in any of them. It is
bind-mounted read-only at /attack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxmgr import cgroups, mountinfo
from sandboxmgr.errors import SandboxError
from tests.conftest import CLI, Result, missing, need_root
from tests.rpmrepo import RpmRepo, tiny_profile

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def attack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the static `attack` and `probe` binaries."""
    need_root()
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc is not installed: the attacks are static C programs built with the host's gcc")
        raise AssertionError  # missing() does not return
    out = tmp_path_factory.mktemp("attack")
    out.chmod(0o755)  # root of a --userns auto sandbox is nobody to it: it may only read and run them
    for program in ("attack", "probe"):
        build = subprocess.run([gcc, "-static", "-O2", "-o", str(out / program), str(HERE / f"{program}.c")],
                               capture_output=True, text=True)
        if build.returncode != 0:
            missing(f"gcc -static failed for {program}.c (libc6-dev has the static libc): {build.stderr[-400:]}")
    return out


@pytest.fixture(scope="session")
def host_marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file that exists only on the host, in a directory this session made."""
    marker = tmp_path_factory.mktemp("host-only") / "host-only-marker"
    marker.write_text("this file is on the host only\n")
    return marker


def attempts(result: Result) -> dict[str, str]:
    """`attack`'s "<attempt>: <ok|ERRNO>" lines as a dict."""
    found = {}
    for line in result.out.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            found[key] = value.strip()
    return found


def need_controllers(*names: str) -> None:
    try:
        cgroups.choose(names, cgroups.hierarchies())
    except SandboxError as exc:  # names the missing controller; any other exception is a bug, not a skip
        missing(f"cgroup controllers {', '.join(names)} are not available: {exc}")


def fresh_tiny(base: Path, repo: RpmRepo) -> CLI:
    """A new store (not built yet) with the Tiny Distro profile."""
    (base / "configs").mkdir(parents=True)
    (base / "configs" / "tiny.yaml").write_text(tiny_profile(repo))
    return CLI(base / "store", base / "configs")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> CLI:
    """A store of its own with the Tiny Distro built: for attacks that remove images."""
    cli = fresh_tiny(tmp_path_factory.mktemp("tiny"), rpm_repo)
    cli.ok("build", "tiny")
    return cli


def wait_until(check: object, timeout: float = 20.0, step: float = 0.05) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return bool(check())


def processes_rooted_in(path: Path) -> list[int]:
    """PIDs whose root or working directory is in ``path`` (as the host sees them)."""
    real = os.path.realpath(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for link in ("root", "cwd"):
            try:
                target = os.readlink(f"/proc/{entry}/{link}")
            except OSError:
                continue
            if mountinfo.is_under(target, real) and real != "/":
                found.append(int(entry))
                break
    return found


def processes_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                continue
    return found


STORE_KINDS = ("mount", "tmp", "lock", "permissions")


def doctor(cli: CLI, *args: str, machine: bool = False) -> tuple[Result, list[dict[str, object]]]:
    """`doctor --json` on the store; its findings (with ``machine``, also the cgroups and
    processes it checks machine-wide, which other test sessions may be making right now)."""
    result = cli("doctor", "--json", *args)
    assert result.code in (0, 1), str(result)
    found = list(json.loads(result.out))
    return result, found if machine else [f for f in found if f["kind"] in STORE_KINDS]


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A host directory with a file that must survive whatever the sandbox (or a crash) does."""
    directory = tmp_path / "precious"
    directory.mkdir()
    (directory / "canary").write_text("must survive\n")
    (directory / "sub").mkdir()
    (directory / "sub" / "deep").write_text("also\n")
    yield directory
    assert (directory / "canary").read_text() == "must survive\n"
    assert (directory / "sub" / "deep").read_text() == "also\n"
