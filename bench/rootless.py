"""Rootless: an ordinary user's sandboxmgr (issue 14) next to root's - a cold build, and entry
(`run -- true`) with bwrap run as that user and systemd-nspawn.

The bench makes the user (useradd: a unique name, a home in /tmp, the subordinate ranges
useradd gives or a free one) and removes it at the end. The user runs the same sandboxmgr:
the console script when the user may run it, else the system's Python of the same version
with the checkout and the environment's site-packages on PYTHONPATH (a venv made from a
Python under /root is out of an ordinary user's reach; the row says which).
"""

from __future__ import annotations

import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BASE,
    REPO,
    TIMING_HEADERS,
    BenchError,
    Candidate,
    Section,
    alternate,
    fmt_ratio,
    fmt_time,
    log,
    md_table,
    ratio,
    remove_tree,
    run_checked,
    shown,
    timed,
    timing_rows,
)
from bench.workspace import Bench, Manager

ENTRY_TARGET = 1.2  # rootless entry / root entry
COLD_TARGET = 1.15  # rootless cold build / root cold build


@dataclass
class User:
    """The ordinary user the bench made, and sandboxmgr as it starts it."""

    name: str
    uid: int
    gid: int
    home: Path
    program: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    how: str = ""

    @property
    def store(self) -> Path:
        return self.home / ".local" / "share" / "sandboxmgr"

    def as_user(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def argv(self, *args: str) -> list[str]:
        return self.as_user([*self.program, *args])

    def timed(self, argv: list[str]) -> float:
        return timed(argv, env=self.env)


def make_user(bench: Bench) -> User:
    name = f"smgr-bench-{secrets.token_hex(3)}"
    home = Path("/tmp") / f"sandboxmgr-bench-{name}"
    run_checked(["useradd", "--create-home", "--home-dir", str(home), "--user-group", "--shell", "/bin/sh", name])
    entry = pwd.getpwnam(name)
    user = User(name, entry.pw_uid, entry.pw_gid, home)
    if not all(_has_range(path, name) for path in ("/etc/subuid", "/etc/subgid")):
        start = max(_range_end("/etc/subuid"), _range_end("/etc/subgid"))
        run_checked(["usermod", "--add-subuids", f"{start}-{start + 65535}", "--add-subgids",
                     f"{start}-{start + 65535}", name])
    user.env = {"HOME": str(home), "USER": name, "LOGNAME": name, "PATH": bench.env["PATH"], "LANG": "C.UTF-8",
                "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CONFIG_HOME": str(home / ".config")}
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        if key in bench.env:
            user.env[key] = bench.env[key]
    user.program, user.how = _program(bench, user)
    return user


def _has_range(path: str, name: str) -> bool:
    return any(line.split(":", 1)[0] == name for line in Path(path).read_text().splitlines())


def _range_end(path: str) -> int:
    end = 100000
    for line in Path(path).read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            end = max(end, int(fields[1]) + int(fields[2]))
    return end


def _program(bench: Bench, user: User) -> tuple[list[str], str]:
    first = subprocess.run(user.as_user([str(bench.exe), "--version"]), env=user.env, capture_output=True, check=False)
    if first.returncode == 0:
        return [str(bench.exe)], f"`{bench.exe}` (the same console script as root's)"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/bin:/bin")
    if system is None:
        raise BenchError(f"an ordinary user cannot run {bench.exe}, and there is no /usr/bin/{version}")
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    user.env["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
    program = [system, "-m", "sandboxmgr"]
    probe = subprocess.run(user.as_user([*program, "--version"]), env=user.env, capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        raise BenchError(f"an ordinary user cannot run sandboxmgr from {REPO}: {probe.stderr.strip()}")
    return program, (f"`{system} -m sandboxmgr` with the checkout on PYTHONPATH (root's interpreter, "
                     f"{bench.python[0]}, is out of an ordinary user's reach)")


def remove_user(user: User) -> None:
    subprocess.run(["userdel", "--remove", user.name], capture_output=True, check=False)
    if user.home.exists():
        remove_tree(user.home, unmount=True)
    for path in ("/etc/subuid", "/etc/subgid"):
        lines = Path(path).read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.split(":", 1)[0] != user.name]
        if kept != lines:
            Path(path).write_text("".join(kept))


def _cold(label: str, command: str, build: Callable[[], float], store: Callable[[], Path]) -> Candidate:
    """A cold build: the store (and with it the package cache) removed before each one, untimed."""
    def prepare() -> None:
        if store().exists():
            remove_tree(store(), unmount=True)
    return Candidate(label, command, build, prepare=prepare, retries=1)


def bench_rootless(bench: Bench) -> Section:
    section = Section("Rootless")
    bench.ensure_tools(["bwrap", "systemd-nspawn"])
    user = make_user(bench)
    root = bench.manager(bench.work / "rootless-root-store")
    try:
        log(f"rootless: user {user.name}, {bench.rounds.builds} cold build rounds, then entry")
        root_cold = _cold("sandboxmgr build, root", shown(root.argv("build", BASE)),
                          lambda: root.timed("build", BASE), lambda: root.store)
        user_cold = _cold("sandboxmgr build, ordinary user", shown(user.argv("build", BASE)),
                          lambda: user.timed(user.argv("build", BASE)), lambda: user.store)
        alternate([root_cold, user_cold], bench.rounds.builds, warmup=False)
        entry = _entry(bench, user, root)
        _write(section, user, (root_cold, user_cold), entry)
    finally:
        remove_user(user)
        root.teardown()
    return section


def _entry(bench: Bench, user: User, manager: Manager) -> list[Candidate]:
    if not any(row.get("profile") == BASE for row in manager.images()):
        manager.call("build", BASE)
    if not user.store.exists():
        run_checked(user.argv("build", BASE), env=user.env)
    # bwrap as the user, on the user's own copy of the bottom layer (its files are the user's).
    bottom = next(iter(sorted((user.store / "layers").iterdir()))) / "diff"
    env = bench.env
    candidates = [
        Candidate("sandboxmgr run, root", shown(manager.argv("run", BASE, "--", "true")),
                  lambda: timed(manager.argv("run", BASE, "--", "true"), env=env)),
        Candidate("sandboxmgr run, ordinary user", shown(user.argv("run", BASE, "--", "true")),
                  lambda: user.timed(user.argv("run", BASE, "--", "true"))),
        Candidate("bwrap, ordinary user", shown(user.as_user(_bwrap(bottom))),
                  lambda: user.timed(user.as_user(_bwrap(bottom))), failure=bench.missing.get("bwrap")),
        Candidate("systemd-nspawn, root", "systemd-nspawn -q --register=no --keep-unit -D R true",
                  lambda: timed(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D",
                                 str(bench.rootfs_copy()), "true"], env=env),
                  failure=bench.missing.get("systemd-nspawn")),
    ]
    log(f"rootless entry: {bench.rounds.entry} alternating rounds of {len(candidates)} commands")
    started = time.monotonic()
    alternate(candidates, bench.rounds.entry, warmup=True)
    log(f"rootless entry: {time.monotonic() - started:.0f} s")
    for candidate in candidates:
        candidate.is_peer = not candidate.label.startswith("sandboxmgr")
    return candidates


def _bwrap(root: Path) -> list[str]:
    return ["bwrap", "--unshare-all", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev", "true"]


def _write(section: Section, user: User, cold: tuple[Candidate, Candidate], entry: list[Candidate]) -> None:
    section.lines += [f"An ordinary user made for the bench ({user.name}: useradd, its own subordinate ranges) runs "
                      f"sandboxmgr as {user.how}. Cold: an empty store and package cache each round, "
                      "root's and the user's alternately. Entry: `run debian-bookworm -- true` on a built image; "
                      "bwrap as the same user on its copy of the bottom layer; systemd-nspawn (root) on R.", ""]
    section.lines += md_table(TIMING_HEADERS, timing_rows([*cold, *entry]))
    root_cold, user_cold = cold
    value = ratio(user_cold.median, root_cold.median)
    section.target(f"rootless cold build ≤ {COLD_TARGET}x root's", fmt_ratio(value),
                   None if value is None else value <= COLD_TARGET)
    by_label = {c.label: c for c in entry}
    mine, roots = by_label["sandboxmgr run, ordinary user"], by_label["sandboxmgr run, root"]
    value = ratio(mine.median, roots.median)
    section.target(f"rootless entry ≤ {ENTRY_TARGET}x root entry", fmt_ratio(value),
                   None if value is None else value <= ENTRY_TARGET)
    nspawn = by_label["systemd-nspawn, root"]
    value = ratio(mine.median, nspawn.median)
    section.target("rootless entry faster than systemd-nspawn (ratio < 1.0)", fmt_ratio(value),
                   None if value is None else value < 1.0)
    bwrap = by_label["bwrap, ordinary user"]
    gap = (f", +{fmt_time(mine.median - bwrap.median)}"
           if mine.median is not None and bwrap.median is not None else "")
    section.reported("rootless entry / bwrap as the same user", fmt_ratio(ratio(mine.median, bwrap.median)) + gap)
