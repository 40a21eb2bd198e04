#!/usr/bin/env python3
"""sandboxmgr's benchmark suite: sandboxmgr against the tools it competes with.

Run as root: ``python bench/run.py [--quick] [--only entry,create,...]`` (``make bench``
runs the whole suite). Every benchmark runs the peers and sandboxmgr alternately
in the same run on the same machine and reports medians and ratios; nothing here
asserts a timing. A full run writes bench/RESULTS.md.

Benchmarks (names for ``--only``):

entry   enter a built image and run ``true``: ``sandboxmgr run`` and ``exec`` vs
        unshare+chroot, bwrap, systemd-nspawn, and the interpreter's own start-up;
        and ``run`` without the seccomp filter, for what the filter costs
create  a throw-away sandbox vs untarring the same root filesystem, two image sizes
cold    a cold build (empty store, empty package cache) vs debootstrap and mmdebstrap
warm    a rebuild with the package cache, and a rebuild after adding one package
disk    ten named sandboxes over one image: disk used vs the image plus their changes
loop    50 ephemeral runs in a row: leaked mounts, temp dirs, processes; throughput

Everything happens under a temporary directory of its own (``--workdir``), with
stores of its own; it is removed at the end, after checking that nothing is
mounted under it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
MIRROR = "http://deb.debian.org/debian"
RELEASE = "bookworm"
BASE = "debian-bookworm"  # the shipped minbase profile
BIG = "bench-bookworm-build"  # BASE plus build-essential: the bigger image
PLUS_ONE = "bench-bookworm-plus-one"  # BASE plus one small package
UNCONFINED = "bench-bookworm-unconfined"  # BASE without the seccomp filter: what the filter costs
EXTRA_PACKAGE = "hello"
ENTRY_SANDBOX = "bench-entry"
DISK_SANDBOXES = 10
BENCHMARKS = ("entry", "create", "cold", "warm", "disk", "loop")
PEER_PACKAGES = {"bwrap": "bubblewrap", "systemd-nspawn": "systemd-container",
                 "debootstrap": "debootstrap", "mmdebstrap": "mmdebstrap"}
SEARCH_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"

HEADER = """\
# sandboxmgr benchmark results

What each benchmark measures. **Entry**: the wall time to enter a built image and run
`true` — `sandboxmgr run` (an ephemeral sandbox, created and removed around the command)
and `sandboxmgr exec` in an existing named sandbox — against `unshare -mpfui chroot`,
`bwrap` and `systemd-nspawn` on a private copy of the same root filesystem, and against
`python3 -c pass` with sandboxmgr's own interpreter, the floor any Python tool pays, and
`sandboxmgr run` of a profile with `seccomp: unconfined` for what the system call filter costs; then
the same again right after 512 MB of unflushed writes to the store's filesystem, as
concurrent builds leave them.
**Create**: a throw-away sandbox (`sandboxmgr run IMAGE true`) against what mock's root
cache does, untarring an uncompressed tarball of the same root filesystem into a fresh
directory and removing it afterwards, for two image sizes; a bare overlayfs mount + chroot
is shown as the floor of the copy-on-write approach. **Cold build**: `sandboxmgr build`
with a fresh store (no layers, no package cache) against plain `debootstrap` and
`mmdebstrap` of the same release, variant and mirror. **Warm rebuild**: the same build
again after `sandboxmgr rmi` (the store's cache/ kept: the package cache and the kept
bootstrap root, which is linked in when the mirror's index is unchanged), the same with
`build --no-cache` (the package cache alone), and the build of a profile that adds one
package to the built one. **Disk**: ten named sandboxes over one image, each
with a small file written by `exec`, measured with `du` (hard links counted once) against
the image plus the files. **Loop**: 50 ephemeral runs in a row, then a check that no
mount, temporary directory, lock or process was left behind.

Every benchmark runs sandboxmgr and its peers alternately in the same run (round-robin,
the order rotated each round), so a noisy machine slows both alike; the figures are
medians, and a ratio is sandboxmgr's median divided by the peer's (below 1.0: sandboxmgr
is faster) unless the row says otherwise. Reproduce with `make bench` (as root; it
installs bubblewrap and systemd-container when missing), or
`.venv/bin/python bench/run.py --quick` for a smoke test; `--only entry,disk` runs a
subset. Builds need the Debian mirror, so their figures include its speed that day.
"""


class BenchError(Exception):
    """A benchmark cannot go on (a setup step failed)."""


class Failed(Exception):
    """One measured command failed; its candidate is reported as n/a with this reason."""


# --- small helpers ---------------------------------------------------------------------


LOAD: list[float] = []  # the 1-minute load average, sampled at every progress line


def log(message: str) -> None:
    LOAD.append(os.getloadavg()[0])
    print(f"bench: {message}", file=sys.stderr, flush=True)


def shown(argv: Sequence[str | Path]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 10:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


def fmt_size(size: float | None) -> str:
    if size is None:
        return "n/a"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def which(command: str) -> str | None:
    return shutil.which(command, path=SEARCH_PATH)


def tail(text: str, lines: int = 1) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) if kept else "(no output)"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def explain(text: str) -> str:
    """The last lines of a command's output, and of the build log sandboxmgr names in it, if any."""
    message = tail(text, 2)
    match = re.search(r"full log: (\S+)", text)
    if match and os.path.isfile(match.group(1)):
        with open(match.group(1), errors="replace") as handle:
            message += " | log: " + tail(handle.read()[-6000:], 4)
    return message


def run_checked(argv: Sequence[str | Path], *, log_file: Path | None = None, env: dict[str, str] | None = None,
                what: str | None = None) -> str:
    """Run a setup (untimed) command; its stdout, or BenchError naming what failed."""
    out = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env=env, check=False)
    if log_file is not None:
        with log_file.open("a") as handle:
            handle.write(f"$ {shown(argv)}\n{out.stdout}{out.stderr}")
    if out.returncode != 0:
        raise BenchError(f"{what or shown(argv)} failed with exit status {out.returncode}: "
                         f"{explain(out.stderr or out.stdout)}")
    return out.stdout


def timed(argv: Sequence[str | Path], *, log_file: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall time of one command, stdout discarded; Failed if it exits non-zero."""
    args = [str(a) for a in argv]
    if log_file is None:
        start = time.perf_counter()
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, check=False)
        elapsed = time.perf_counter() - start
        errors = proc.stderr.decode(errors="replace")
    else:
        with log_file.open("a") as handle:
            handle.write(f"$ {shown(args)}\n")
            handle.flush()
            start = time.perf_counter()
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                  env=env, check=False)
            elapsed = time.perf_counter() - start
        errors = log_file.read_text(errors="replace")[-4000:]
    if proc.returncode != 0:
        raise Failed(f"exit status {proc.returncode}: {explain(errors)}")
    return elapsed


def du(paths: Sequence[Path]) -> int:
    """Bytes used by the trees, hard links counted once across all of them (du -sxc)."""
    if not paths:
        return 0
    out = run_checked(["du", "-sxc", "-B1", *paths])
    return int(out.strip().splitlines()[-1].split()[0])


# --- mounts and safe removal ------------------------------------------------------------


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mount_lines() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return handle.read().splitlines()


def mount_points() -> list[str]:
    return [_unescape(line.split()[4]) for line in mount_lines()]


def mounts_under(path: Path) -> list[str]:
    top = str(path).rstrip("/")
    return [p for p in mount_points() if p == top or p.startswith(top + "/")]


def mount_identity(line: str) -> str:
    """A mountinfo line without the mount and parent ids, which change on every mount."""
    return " ".join(line.split()[2:])


def remove_tree(path: Path, *, unmount: bool = False) -> None:
    """rm -rf, but only once nothing is mounted at or under ``path``.

    ``unmount`` first detaches what a failed peer tool (debootstrap) left
    mounted in its own output directory; nothing else is ever unmounted.
    """
    if not os.path.lexists(path):
        return
    if unmount:
        for point in sorted(mounts_under(path), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    left = mounts_under(path)
    if left:
        raise BenchError(f"not removing {path}: {left[0]} is mounted under it")
    run_checked(["rm", "-rf", "--one-file-system", path])


# --- timing loops -------------------------------------------------------------------------


@dataclass
class Candidate:
    """One command of a benchmark: measured once per round, in turn with the others."""

    label: str
    command: str  # as shown in the results
    measure: Callable[[], float]
    prepare: Callable[[], None] | None = None  # untimed, before each measurement
    finish: Callable[[], None] | None = None  # untimed, after each measurement
    is_peer: bool = True
    retries: int = 0  # builds: a failed measurement (a mirror hiccup) is tried again this often
    times: list[float] = field(default_factory=list)
    failure: str | None = None
    retried: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and self.failure is None else None

    def once(self) -> float | None:
        for attempt in range(self.retries + 1):
            if self.failure is not None:
                return None
            try:
                if self.prepare is not None:
                    self.prepare()
                elapsed = self.measure()
                if self.finish is not None:
                    self.finish()
                return elapsed
            except (Failed, BenchError) as exc:
                if attempt < self.retries:
                    self.retried.append(str(exc))
                    log(f"{self.label}: failed, trying again: {exc}")
                    continue
                self.failure = str(exc)
                log(f"{self.label}: n/a: {exc}")
        return None


def alternate(candidates: Sequence[Candidate], rounds: int, *, warmup: bool, rotate: bool = True) -> None:
    """Measure every candidate once per round, the order rotated each round."""
    if warmup:
        for candidate in candidates:
            candidate.once()
    for number in range(rounds):
        shift = number % len(candidates) if rotate else 0
        order = list(candidates[shift:]) + list(candidates[:shift])
        for candidate in order:
            elapsed = candidate.once()
            if elapsed is not None:
                candidate.times.append(elapsed)
        done = ", ".join(f"{c.label} {fmt_time(c.times[-1]) if c.times and not c.failure else 'n/a'}"
                         for c in candidates)
        log(f"round {number + 1}/{rounds}: {done}")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def timing_rows(candidates: Sequence[Candidate]) -> list[list[str]]:
    rows = []
    for c in candidates:
        if c.failure is not None or not c.times:
            rows.append([c.label, f"`{c.command}`", "n/a", "", "", f"n/a: {c.failure or 'not run'}"])
        else:
            rows.append([c.label, f"`{c.command}`", fmt_time(c.median), fmt_time(min(c.times)),
                         fmt_time(max(c.times)), str(len(c.times))])
    return rows


TIMING_HEADERS = ["", "command", "median", "min", "max", "runs"]


# --- results --------------------------------------------------------------------------------


@dataclass
class Target:
    benchmark: str
    goal: str
    measured: str
    met: bool | None  # None: could not be measured


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def target(self, goal: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(self.title, goal, measured, met))


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "n/a"}[met]


# --- sandboxmgr ------------------------------------------------------------------------------


@dataclass
class Manager:
    """sandboxmgr with a store; the bench's own profiles are in ``configs``."""

    exe: Path
    store: Path
    configs: Path
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [str(self.exe), "--store", str(self.store), *args]

    def call(self, *args: str, log_file: Path | None = None) -> str:
        return run_checked(self.argv(*args), log_file=log_file, env=self.env, what=f"sandboxmgr {' '.join(args)}")

    def timed(self, *args: str, log_file: Path | None = None) -> float:
        return timed(self.argv(*args), log_file=log_file, env=self.env)

    def images(self) -> list[dict[str, Any]]:
        if not self.store.is_dir():
            return []
        data = json.loads(self.call("images", "--json"))
        return [dict(row) for row in data]

    def image(self, profile: str) -> dict[str, Any]:
        rows = [row for row in self.images() if row.get("profile") == profile and not row.get("outdated")]
        if not rows:
            raise BenchError(f"no image of {profile} in {self.store}")
        return rows[-1]

    def sandboxes(self) -> list[str]:
        if not self.store.is_dir():
            return []
        return [str(row["name"]) for row in json.loads(self.call("ls", "--json"))]

    def build(self, profile: str, log_file: Path) -> dict[str, Any]:
        self.call("build", self.ref(profile), log_file=log_file)
        return self.image(profile)

    def ref(self, profile: str) -> str:
        """How a profile is named on the command line: the shipped one by name, the bench's own by the path
        of its file (as `--configs` would, but `--configs` also turns off `run`'s fast path)."""
        return profile if profile == BASE else str(self.configs / f"{profile}.yaml")

    def teardown(self) -> None:
        """Remove every sandbox and image of this store with sandboxmgr itself, then the store."""
        if not self.store.is_dir():
            return
        names = self.sandboxes()
        if names:
            self.call("-q", "rm", *names)
        keys = [str(row["key"]) for row in self.images()]
        if keys:
            self.call("-q", "rmi", *keys)
        remove_tree(self.store)


def layer_dirs(image: dict[str, Any]) -> list[Path]:
    """The image's layer directories, bottom first."""
    return [Path(str(layer["path"])) for layer in image.get("layers", [])]


# --- the machine -------------------------------------------------------------------------------


def read_first(path: str, pattern: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                match = re.match(pattern, line)
                if match:
                    return match.group(1).strip().strip('"')
    except OSError:
        pass
    return "?"


def tool_version(argv: list[str]) -> str:
    if which(argv[0]) is None:
        return "not installed"
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def code_state() -> str:
    """The checkout's commit, whether sandboxmgr/ or configs/ differ from it, and a digest of their files
    (an editable install runs whatever is there, so a change during the run would show here)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "sandboxmgr", "configs"],
                           capture_output=True, text=True, check=False).stdout.strip()
    digest = hashlib.sha256()
    for path in sorted([*(REPO / "sandboxmgr").rglob("*.py"), *(REPO / "configs").rglob("*.yaml")]):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "") + f", files {digest.hexdigest()[:12]}"


def machine(python: Path, exe: Path, code_before: str) -> list[tuple[str, str]]:
    mem_kb = read_first("/proc/meminfo", r"MemTotal:\s+(\d+)")
    code_after = code_state()
    code = code_after + (" throughout the run" if code_after == code_before
                         else f" at the end, **{code_before} at the start: the code changed during the run**")
    py = subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                        text=True, check=False).stdout.strip()
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU", read_first("/proc/cpuinfo", r"model name\s*:\s*(.*)")),
        ("memory", f"{int(mem_kb) // 1024} MiB" if mem_kb.isdigit() else "?"),
        ("kernel", platform.release()),
        ("OS", read_first("/etc/os-release", r"PRETTY_NAME=(.*)")),
        ("load average (1 min) during the run",
         f"{min(LOAD):.2f} to {max(LOAD):.2f}, median {statistics.median(LOAD):.2f} (sampled at each progress "
         "line; the bench's own builds count too)" if LOAD else "?"),
        ("python", f"{py} ({python})"),
        ("sandboxmgr", f"{exe}; {code}"),
        ("debootstrap", tool_version(["debootstrap", "--version"])),
        ("mmdebstrap", tool_version(["mmdebstrap", "--version"])),
        ("bwrap", tool_version(["bwrap", "--version"])),
        ("systemd-nspawn", tool_version(["systemd-nspawn", "--version"])),
    ]


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rounds:
    entry: int
    create: int
    builds: int
    loop: int
    importtime: int


FULL = Rounds(entry=30, create=10, builds=3, loop=50, importtime=5)
QUICK = Rounds(entry=5, create=2, builds=1, loop=10, importtime=2)


class Bench:
    def __init__(self, exe: Path, python: Path, work: Path, rounds: Rounds) -> None:
        self.exe = exe
        self.python = python
        self.work = work
        self.rounds = rounds
        # No SANDBOXMGR_* settings of the caller's; and bytecode is written as in a normal install
        # (with PYTHONDONTWRITEBYTECODE, a tool whose sources changed compiles them on every run).
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SANDBOXMGR_") and k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PATH"] = SEARCH_PATH
        self.configs = work / "configs"
        self.logs = work / "logs"
        self.scratch = work / "scratch"
        for directory in (self.configs, self.logs, self.scratch):
            directory.mkdir()
        self.main = self.manager(work / "store")
        self.managers: list[Manager] = [self.main]
        self.peer_root: Path | None = None
        self.tars: dict[str, tuple[Path, int]] = {}
        self.missing: dict[str, str] = {}
        self._write_profiles()

    def manager(self, store: Path) -> Manager:
        return Manager(self.exe, store, self.configs, self.env)

    def _write_profiles(self) -> None:
        (self.configs / f"{BIG}.yaml").write_text(
            f"description: bench - Debian 12 minbase with build-essential (the bigger image)\n"
            f"extends: {BASE}\npackages: [build-essential]\n")
        (self.configs / f"{PLUS_ONE}.yaml").write_text(
            f"description: bench - Debian 12 minbase plus one package\n"
            f"extends: {BASE}\npackages: [{EXTRA_PACKAGE}]\n")
        # A runtime setting only: the same image as BASE, and `run` takes the same fast path.
        (self.configs / f"{UNCONFINED}.yaml").write_text(
            f"description: bench - Debian 12 minbase, no seccomp filter\nextends: {BASE}\nseccomp: unconfined\n")

    # -- setup shared by several benchmarks
    def ensure_tools(self, commands: Sequence[str]) -> None:
        """Install the peers that are missing (apt-get); a failure makes them n/a, not fatal."""
        missing = [c for c in commands if which(c) is None and c not in self.missing]
        if not missing:
            return
        packages = sorted({PEER_PACKAGES[c] for c in missing})
        log(f"installing {' '.join(packages)} (apt-get)")
        env = dict(self.env, DEBIAN_FRONTEND="noninteractive")
        try:
            run_checked(["apt-get", "update", "-q"], env=env)
            run_checked(["apt-get", "install", "-y", "-q", *packages], env=env)
        except BenchError as exc:
            for command in missing:
                self.missing[command] = f"could not install {PEER_PACKAGES[command]}: {exc}"
            return
        for command in missing:
            if which(command) is None:
                self.missing[command] = f"{PEER_PACKAGES[command]} installed but no {command} on PATH"

    def image(self, profile: str) -> dict[str, Any]:
        """The image of ``profile`` in the main store, built (untimed) if needed."""
        existing = [row for row in self.main.images() if row.get("profile") == profile]
        if existing:
            return existing[-1]
        log(f"building {profile} in the bench store (untimed setup)")
        try:
            return self.main.build(profile, self.logs / f"setup-{profile}.log")
        except BenchError as exc:  # a mirror hiccup: once more
            log(f"{exc}; trying again")
            return self.main.build(profile, self.logs / f"setup-{profile}.log")

    def rootfs_copy(self) -> Path:
        """A private copy of BASE's bottom layer for the peers, so they never write into the store."""
        if self.peer_root is None:
            bottom = layer_dirs(self.image(BASE))[0] / "diff"
            target = self.work / "rootfs"
            run_checked(["cp", "-a", bottom, target])
            self.peer_root = target
        return self.peer_root

    def rootfs_tar(self, profile: str) -> tuple[Path, int]:
        """An uncompressed tarball of the image's merged root (made once), and its size."""
        if profile in self.tars:
            return self.tars[profile]
        layers = [d / "diff" for d in layer_dirs(self.image(profile))]
        tar = self.work / f"{profile}.tar"
        if len(layers) == 1:
            run_checked(["tar", "--numeric-owner", "-C", layers[0], "-cf", tar, "."])
        else:
            # The merged view, mounted read-only in a mount namespace of its own (gone when it exits).
            point = self.scratch / f"merged-{profile}"
            point.mkdir()
            lower = ":".join(str(d) for d in reversed(layers))
            script = ('mount -t overlay -o "ro,lowerdir=$1" overlay "$2" && '
                      'tar --numeric-owner -C "$2" -cf "$3" .')
            run_checked(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", lower, point, tar])
            point.rmdir()
        self.tars[profile] = (tar, tar.stat().st_size)
        return self.tars[profile]

    def teardown(self, keep: bool) -> None:
        for manager in self.managers:
            try:
                manager.teardown()
            except BenchError as exc:
                log(f"cleanup of {manager.store}: {exc}")
        if keep:
            log(f"kept {self.work}")
            return
        remove_tree(self.work, unmount=False)


# --- 1. entry ---------------------------------------------------------------------------------


def bare_overlay(layers: Sequence[Path], top: Path, volatile: bool = False) -> float:
    """The floor of a copy-on-write sandbox: fresh upper/work dirs, an overlayfs mount in a mount
    namespace of its own, chroot + true, the namespace's end (which unmounts it), the dirs removed."""
    lower = ":".join(str(d) for d in reversed(layers))
    options = "lowerdir=$1,upperdir=$2/u,workdir=$2/w" + (",volatile" if volatile else "")
    script = (f'mkdir "$2/u" "$2/w" "$2/m" && mount -t overlay -o "{options}" overlay "$2/m" && '
              'exec chroot "$2/m" true')
    start = time.perf_counter()
    top.mkdir()
    timed(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", lower, top])
    timed(["rm", "-rf", "--one-file-system", top])
    return time.perf_counter() - start


DIRTY_MB = 512


def make_dirty(path: Path) -> Callable[[], None]:
    """A prepare step: sync, then leave DIRTY_MB of written-but-unflushed data on the bench's filesystem
    (the store's), as a concurrent build or test run does. Below the kernel's background writeback
    threshold on this machine's memory, it stays dirty for the measurement."""
    def prepare() -> None:
        path.unlink(missing_ok=True)  # its dirty pages are dropped, not written
        os.sync()
        chunk = b"\xa5" * (1 << 20)
        with path.open("wb") as handle:
            for _ in range(DIRTY_MB):
                handle.write(chunk)
    return prepare


def entry_under_writes(bench: Bench, clean: dict[str, Candidate]) -> list[str]:
    """Entry again, each command right after DIRTY_MB of unflushed writes (untimed)."""
    dirty_file = bench.work / "dirty.bin"
    prepare = make_dirty(dirty_file)
    layers = [d / "diff" for d in layer_dirs(bench.image(BASE))]
    candidates = [Candidate(c.label, c.command, c.measure, prepare=prepare, failure=c.failure)
                  for c in clean.values() if not c.label.startswith("python3")]
    candidates += [
        Candidate("bare overlayfs + chroot", "unshare -m: mount -t overlay (lowerdir=the image's layer) + chroot "
                  "true; rm -rf upper, work", lambda: bare_overlay(layers, bench.scratch / "overlay-entry"),
                  prepare=prepare),
        Candidate("same, overlay mounted with -o volatile", "the same with `volatile`",
                  lambda: bare_overlay(layers, bench.scratch / "overlay-entry", volatile=True), prepare=prepare),
    ]
    rounds = max(2, bench.rounds.entry // 6)
    log(f"entry under writes: {rounds} alternating rounds of {len(candidates)} commands, "
        f"each after {DIRTY_MB} MB of unflushed writes")
    alternate(candidates, rounds, warmup=False)
    dirty_file.unlink(missing_ok=True)
    rows = []
    for c in candidates:
        before = clean.get(c.label)
        slower = fmt_ratio(ratio(c.median, before.median)) if before is not None else ""
        rows.append([c.label, fmt_time(c.median) if c.failure is None else f"n/a: {c.failure}",
                     fmt_time(min(c.times)) if c.times and c.failure is None else "", slower])
    lines = ["### Entry while the disk has unflushed writes", "",
             f"The same commands, each right after writing {DIRTY_MB} MB to a file on the store's filesystem "
             "without syncing it (untimed; a `sync` first, so every measurement starts alike) — what a build "
             "farm's concurrent builds do. A copy-on-write sandbox pays here when its overlayfs is unmounted "
             "(the namespace's end): overlayfs syncs the whole upper filesystem then, unless it was mounted "
             "`volatile` (Linux 5.10+), which an ephemeral sandbox, whose upper dir is thrown away, can afford.",
             ""]
    lines += md_table(["", "median", "min", "slower than without the writes"], rows)
    return lines


def command_candidate(label: str, argv: list[str], env: dict[str, str], *, is_peer: bool = True,
                      failure: str | None = None) -> Candidate:
    return Candidate(label, shown(argv), lambda: timed(argv, env=env), is_peer=is_peer, failure=failure)


def bench_entry(bench: Bench) -> Section:
    section = Section("Entry")
    bench.ensure_tools(["bwrap", "systemd-nspawn"])
    bench.image(BASE)
    root = str(bench.rootfs_copy())
    sm = bench.main
    sm.call("create", BASE, "--name", ENTRY_SANDBOX)
    env = bench.env
    peers = [
        ("unshare + chroot", ["unshare", "-mpfui", "chroot", root, "true"]),
        ("bwrap", ["bwrap", "--bind", root, "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all", "true"]),
        ("systemd-nspawn", ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", root, "true"]),
    ]
    floor = command_candidate("python3 -c pass (floor)", [str(bench.python), "-c", "pass"], env)
    no_site = command_candidate("python3 -S -c pass (no site)", [str(bench.python), "-S", "-c", "pass"], env)
    peer_candidates = [command_candidate(label, argv, env, failure=bench.missing.get(argv[0]))
                       for label, argv in peers]
    run = command_candidate("sandboxmgr run", sm.argv("run", BASE, "--", "true"), env, is_peer=False)
    exec_ = command_candidate("sandboxmgr exec", sm.argv("exec", ENTRY_SANDBOX, "--", "true"), env, is_peer=False)
    unconfined = command_candidate("sandboxmgr run, seccomp: unconfined",
                                   sm.argv("run", sm.ref(UNCONFINED), "--", "true"), env, is_peer=False)
    candidates = [floor, no_site, *peer_candidates, run, exec_, unconfined]
    log(f"entry: {bench.rounds.entry} alternating rounds of {len(candidates)} commands")
    alternate(candidates, bench.rounds.entry, warmup=True)

    section.lines.append(f"R is a private copy (`cp -a`) of the bottom layer of `{BASE}` (minbase); "
                         f"IMAGE is `{BASE}`; all commands run `true`. The floor is sandboxmgr's own "
                         "interpreter (its venv); `-S` (no `site`: no site-packages, no editable-install "
                         "import hook) shows what the venv's start-up adds to it.")
    section.lines.append("")
    section.lines += md_table(TIMING_HEADERS, timing_rows(candidates))
    section.lines.append("")
    headers = ["", *(f"vs {c.label}" for c in peer_candidates), "above the python floor"]
    rows = []
    for ours in (run, exec_):
        cells = [fmt_ratio(ratio(ours.median, c.median)) for c in peer_candidates]
        if ours.median is not None and floor.median is not None:
            above = f"+{fmt_time(ours.median - floor.median)} ({fmt_ratio(ratio(ours.median, floor.median))})"
        else:
            above = "n/a"
        rows.append([ours.label, *cells, above])
    section.lines.append("Ratios (sandboxmgr's median / the peer's):")
    section.lines.append("")
    section.lines += md_table(headers, rows)
    section.lines.append("")
    if run.median is not None and unconfined.median is not None:
        cost = run.median - unconfined.median
        section.lines.append(f"The seccomp filter's cost: `sandboxmgr run` {fmt_time(run.median)} with the default "
                             f"filter, {fmt_time(unconfined.median)} with `seccomp: unconfined` (`{UNCONFINED}`, "
                             f"the same image and fast path): {'+' if cost >= 0 else '-'}{fmt_time(abs(cost))}.")
    nspawn = peer_candidates[2]
    for ours in (run, exec_):
        value = ratio(ours.median, nspawn.median)
        section.target(f"`{ours.label}` faster than systemd-nspawn (ratio < 1.0)",
                       fmt_ratio(value) + ("" if nspawn.failure is None else f" (nspawn n/a: {nspawn.failure})"),
                       None if value is None else value < 1.0)

    section.lines.append("")
    section.lines += entry_under_writes(bench, {c.label: c for c in candidates})
    sm.call("-q", "rm", ENTRY_SANDBOX)
    profile = import_profile(bench)
    if profile:
        section.lines.append("")
        section.lines += profile
    return section


def import_profile(bench: Bench) -> list[str]:
    """Where `sandboxmgr run` spends its time before it does anything: python -X importtime."""
    argv = [str(bench.python), "-X", "importtime", str(bench.exe), "--store", str(bench.main.store),
            "run", BASE, "--", "true"]
    per_module: dict[str, list[int]] = {}
    self_times: dict[str, list[int]] = {}
    totals: list[int] = []
    for _ in range(bench.rounds.importtime):
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=bench.env,
                             check=False)
        if out.returncode != 0:
            return [f"(python -X importtime failed: {tail(out.stderr)})"]
        total = 0
        for line in out.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S.*)$", line)
            if not match:
                continue
            name = match.group(4).strip()
            self_times.setdefault(name, []).append(int(match.group(1)))
            if not match.group(3):  # top level (nested imports are indented)
                cumulative = int(match.group(2))
                per_module.setdefault(name, []).append(cumulative)
                total += cumulative
        totals.append(total)
    if not totals:
        return []
    medians = sorted(((statistics.median(v), k) for k, v in per_module.items()), reverse=True)
    lines = [f"Where the time goes: `python -X importtime` of `sandboxmgr run {BASE} -- true` "
             f"(median of {len(totals)} runs; importtime itself adds some overhead). Imports take "
             f"{statistics.median(totals) / 1000:.0f} ms in all; the biggest top-level imports:", ""]
    rows = [[f"`{name}`", f"{micros / 1000:.1f} ms"] for micros, name in medians[:8]]
    lines += md_table(["module (top level, with what it imports)", "cumulative"], rows)
    own = sorted(((statistics.median(v), k) for k, v in self_times.items()), reverse=True)
    lines += ["", "The single modules that cost most (their own time, without what they import):", ""]
    lines += md_table(["module", "self"], [[f"`{name}`", f"{micros / 1000:.1f} ms"] for micros, name in own[:12]])
    return lines


# --- 2. create ------------------------------------------------------------------------------


def bench_create(bench: Bench) -> Section:
    section = Section("Create")
    sm = bench.main
    sizes = [(BASE, "minbase"), (BIG, "minbase + build-essential")]
    candidates: list[Candidate] = []
    info: list[tuple[str, str, int, int, Candidate, Candidate, Candidate]] = []
    for profile, label in sizes:
        image = bench.image(profile)
        tar, tar_size = bench.rootfs_tar(profile)
        layers = [d / "diff" for d in layer_dirs(image)]

        def untar(tar: Path = tar, profile: str = profile) -> float:
            target = bench.scratch / f"untar-{profile}"
            start = time.perf_counter()
            target.mkdir()
            timed(["tar", "--numeric-owner", "-xpf", tar, "-C", target])
            timed(["rm", "-rf", "--one-file-system", target])
            return time.perf_counter() - start

        def overlay(layers: list[Path] = layers, profile: str = profile) -> float:
            return bare_overlay(layers, bench.scratch / f"overlay-{profile}")

        peer = Candidate(f"untar ({label})", f"mkdir D && tar -xpf {profile}.tar -C D && rm -rf D", untar,
                         prepare=os.sync)
        raw = Candidate(f"bare overlayfs ({label})", "mkdir u w m; unshare -m: mount overlay + chroot m true; "
                        "rm -rf", overlay, prepare=os.sync)
        def run(profile: str = profile) -> float:
            return sm.timed("run", sm.ref(profile), "true")

        shown_ref = profile if profile == BASE else f"CONFIGS/{profile}.yaml"
        ours = Candidate(f"sandboxmgr run ({label})", f"sandboxmgr run {shown_ref} true", run,
                         prepare=os.sync, is_peer=False)
        candidates += [peer, raw, ours]
        info.append((profile, label, int(image.get("size") or 0), tar_size, peer, raw, ours))
    log(f"create: {bench.rounds.create} alternating rounds of {len(candidates)} commands")
    alternate(candidates, bench.rounds.create, warmup=True)

    section.lines.append("Each untar and each sandbox starts after a `sync` (untimed), so one's write-back "
                         "does not land on the next one's clock. The tarball is uncompressed and in the page "
                         "cache: the fastest case for the peer.")
    section.lines.append("")
    section.lines += md_table(TIMING_HEADERS, timing_rows(candidates))
    section.lines.append("")
    rows = []
    speedups: list[float | None] = []
    for profile, label, size, tar_size, peer, raw, ours in info:
        speedup = ratio(peer.median, ours.median)
        speedups.append(speedup)
        rows.append([label, f"`{profile}`", fmt_size(size), fmt_size(tar_size), fmt_time(peer.median),
                     fmt_time(ours.median), fmt_ratio(speedup), fmt_ratio(ratio(ours.median, raw.median))])
    section.lines += md_table(["image", "profile", "image size", "tarball", "untar + rm", "sandboxmgr run",
                               "speed-up (untar / sandboxmgr)", "sandboxmgr / bare overlayfs"], rows)
    for (_, label, *_rest), speedup in zip(info, speedups, strict=True):
        section.target(f"throw-away sandbox ≥ 30x faster than untar ({label})", fmt_ratio(speedup),
                       None if speedup is None else speedup >= 30)
    small, big = info[0], info[1]
    growth = ratio(big[6].median, small[6].median)
    size_growth = ratio(float(big[2]), float(small[2])) if small[2] else None
    section.target("sandbox creation does not grow with the image's size (bigger / smaller ≤ 1.2)",
                   f"{fmt_ratio(growth)} for an image {fmt_ratio(size_growth)} the size "
                   f"(untar: {fmt_ratio(ratio(big[4].median, small[4].median))})",
                   None if growth is None else growth <= 1.2)
    return section


# --- 3. and 4. builds ---------------------------------------------------------------------------


def bench_builds(bench: Bench, cold: bool, warm: bool) -> list[Section]:
    """Cold builds against debootstrap and mmdebstrap, and warm rebuilds, in one alternating loop.

    The first cold build's store becomes the warm store: there ``rmi`` (keeping cache/) and a new
    build measure the warm rebuild, and a profile adding one package measures the small change.
    """
    if cold:
        bench.ensure_tools(["debootstrap", "mmdebstrap"])
    builds = bench.work / "builds"
    builds.mkdir(exist_ok=True)
    counter = {"n": 0}
    warm_store: dict[str, Manager] = {}
    sizes: dict[str, list[int]] = {}
    build_log = bench.logs / "builds.log"

    def fresh_store() -> Manager:
        counter["n"] += 1
        manager = bench.manager(builds / f"cold-{counter['n']}")
        bench.managers.append(manager)
        return manager

    current: dict[str, Manager] = {}

    def cold_prepare() -> None:
        current["cold"] = fresh_store()

    def cold_measure() -> float:
        return current["cold"].timed("build", BASE, log_file=build_log)

    tool_seconds: dict[str, list[float]] = {}

    def bootstrap_seconds(manager: Manager, label: str) -> None:
        """The bootstrap tool's own time inside sandboxmgr's build (mmdebstrap's 'success in N seconds')."""
        for log_path in sorted((manager.store / "logs").glob(f"build-{BASE}-*.log")):
            found = re.findall(r"success in ([\d.]+) seconds", log_path.read_text(errors="replace"))
            if found:
                tool_seconds.setdefault(label, []).append(float(found[-1]))

    def cold_finish() -> None:
        manager = current["cold"]
        bootstrap_seconds(manager, "cold")
        current.pop("cold")
        sizes.setdefault("sandboxmgr", []).append(int(manager.image(BASE).get("size") or 0))
        if warm and "store" not in warm_store:
            warm_store["store"] = manager  # kept: its cache/ serves the warm rebuilds
        else:
            manager.teardown()
            bench.managers.remove(manager)

    def peer(tool: str, argv_of: Callable[[Path], list[str]]) -> Candidate:
        target = builds / tool

        def measure() -> float:
            return timed(argv_of(target), log_file=build_log, env=bench.env)

        def finish() -> None:
            sizes.setdefault(tool, []).append(du([target]))
            remove_tree(target, unmount=True)

        def cleanup_first() -> None:
            remove_tree(target, unmount=True)

        argv = argv_of(Path("DIR"))
        return Candidate(tool, shown(argv), measure, prepare=cleanup_first, finish=finish,
                         failure=bench.missing.get(tool), retries=1)

    def warm_prepare() -> None:
        manager = warm_store["store"]
        keys = [str(row["key"]) for row in manager.images() if row.get("profile") == BASE]
        if keys:
            manager.call("-q", "rmi", *keys)

    linked = {"warm": 0}

    def warm_measure() -> float:
        before = build_log.stat().st_size if build_log.exists() else 0
        elapsed = warm_store["store"].timed("build", BASE, log_file=build_log)
        with build_log.open(errors="replace") as handle:
            handle.seek(before)
            if "linking the kept root" in handle.read():
                linked["warm"] += 1
        return elapsed

    def no_cache_measure() -> float:
        return warm_store["store"].timed("build", "--no-cache", BASE, log_file=build_log)

    def no_cache_finish() -> None:
        bootstrap_seconds(warm_store["store"], "package cache only")

    def plus_one_measure() -> float:
        manager = warm_store["store"]
        return manager.timed("build", manager.ref(PLUS_ONE), log_file=build_log)

    def plus_one_finish() -> None:
        warm_store["store"].call("-q", "rmi", PLUS_ONE)

    sm_cold = Candidate("sandboxmgr build, cold", f"sandboxmgr --store EMPTY build {BASE}", cold_measure,
                        prepare=cold_prepare, finish=cold_finish, is_peer=False, retries=1)
    trio = [sm_cold]
    if cold:
        trio.append(peer("debootstrap", lambda d: ["debootstrap", "--variant=minbase", RELEASE, str(d), MIRROR]))
        trio.append(peer("mmdebstrap", lambda d: ["mmdebstrap", "--variant=minbase", RELEASE, str(d), MIRROR]))
    sm_warm = Candidate("sandboxmgr build, warm", f"sandboxmgr rmi {BASE} (untimed); sandboxmgr build {BASE}",
                        warm_measure, prepare=warm_prepare, is_peer=False, retries=1)
    sm_no_cache = Candidate("sandboxmgr build, warm, --no-cache",
                            f"sandboxmgr rmi {BASE} (untimed); sandboxmgr build --no-cache {BASE}",
                            no_cache_measure, prepare=warm_prepare, finish=no_cache_finish, is_peer=False,
                            retries=1)
    sm_plus = Candidate(f"sandboxmgr build, +{EXTRA_PACKAGE}",
                        f"sandboxmgr build CONFIGS/{PLUS_ONE}.yaml ({BASE} built; packages: [{EXTRA_PACKAGE}])",
                        plus_one_measure, finish=plus_one_finish, is_peer=False, retries=1)
    rounds = bench.rounds.builds
    log(f"builds: {rounds} alternating rounds of {', '.join(c.label for c in trio)}"
        + (f", then {sm_warm.label}, {sm_no_cache.label} and {sm_plus.label}" if warm else ""))
    for number in range(rounds):
        shift = number % len(trio)
        for candidate in trio[shift:] + trio[:shift]:
            elapsed = candidate.once()
            if elapsed is not None:
                candidate.times.append(elapsed)
            log(f"round {number + 1}/{rounds}: {candidate.label} {fmt_time(elapsed)}")
        if warm:
            if "store" not in warm_store:
                sm_warm.failure = sm_no_cache.failure = sm_plus.failure = (
                    f"no cold build to start from ({sm_cold.failure})")
            for candidate in (sm_warm, sm_no_cache, sm_plus):
                elapsed = candidate.once()
                if elapsed is not None:
                    candidate.times.append(elapsed)
                log(f"round {number + 1}/{rounds}: {candidate.label} {fmt_time(elapsed)}")

    def tool_note(label: str) -> str:
        values = tool_seconds.get(label)
        if not values:
            return f"(the {label} builds' logs gave no bootstrap time)"
        tool = statistics.median(values)
        total = sm_cold.median if label == "cold" else sm_no_cache.median
        rest = "" if total is None else f", and everything around it {fmt_time(total - tool)}"
        return (f"Inside sandboxmgr's {label} build the bootstrap tool took {fmt_time(tool)} (median, from its "
                f"'success in N seconds' line in the build log){rest} (sandboxmgr's steps in the image after "
                "the bootstrap, such as its `apt-get update` and `apt-get clean`, and publishing the layer).")

    retried = [f"{c.label}: {reason}" for c in (*trio, sm_warm, sm_no_cache, sm_plus) for reason in c.retried]
    notes = ["Measurements that failed and were repeated (not counted): " + "; ".join(retried)] if retried else []
    sections = []
    if cold:
        section = Section("Cold build", notes=list(notes))
        section.lines.append(f"{RELEASE}, minbase, {MIRROR}; each sandboxmgr build gets a fresh `--store` (no "
                             "layers, no package cache), each peer a fresh target directory.")
        section.lines.append("")
        rows = timing_rows(trio)
        for row, candidate in zip(rows, trio, strict=True):
            key = "sandboxmgr" if candidate is sm_cold else candidate.label
            row.append(fmt_size(statistics.median(sizes[key])) if sizes.get(key) else "n/a")
        section.lines += md_table([*TIMING_HEADERS, "output size (du)"], rows)
        peers_medians = [c.median for c in trio[1:] if c.median is not None]
        fastest = min(peers_medians) if peers_medians else None
        value = ratio(sm_cold.median, fastest)
        section.lines.append("")
        section.lines.append("sandboxmgr / " + ", ".join(f"{c.label}: {fmt_ratio(ratio(sm_cold.median, c.median))}"
                                                         for c in trio[1:]))
        section.lines += ["", tool_note("cold")]
        section.target("cold build no slower than the faster of debootstrap and mmdebstrap (ratio ≤ 1.0)",
                       fmt_ratio(value), None if value is None else value <= 1.0)
        sections.append(section)
    if warm:
        section = Section("Warm rebuild", notes=list(notes))
        section.lines.append(
            "In the store of the first cold build: `rmi` keeps the store's cache/ - the package cache and "
            "the kept bootstrap root. The warm build links the kept root when the mirror's index is "
            "unchanged (it checks InRelease first); `--no-cache` bootstraps again with the package cache "
            f"alone. The +{EXTRA_PACKAGE} build reuses {BASE}'s bootstrap layer and adds a packages layer "
            "(removed again after each round).")
        section.lines.append("")
        section.lines += md_table(TIMING_HEADERS, timing_rows([sm_cold, sm_warm, sm_no_cache, sm_plus]))
        section.lines.append("")
        warm_ratio = ratio(sm_warm.median, sm_cold.median)
        no_cache_ratio = ratio(sm_no_cache.median, sm_cold.median)
        plus_ratio = ratio(sm_plus.median, sm_cold.median)
        section.lines.append(f"warm / cold: {fmt_ratio(warm_ratio)} ({linked['warm']} of {len(sm_warm.times)} "
                             f"warm builds linked the kept root); package cache only (`--no-cache`) / cold: "
                             f"{fmt_ratio(no_cache_ratio)}; +{EXTRA_PACKAGE} / cold: {fmt_ratio(plus_ratio)}")
        section.lines += ["", tool_note("package cache only")]
        section.target("warm rebuild ≤ 0.5x a cold build", fmt_ratio(warm_ratio),
                       None if warm_ratio is None else warm_ratio <= 0.5)
        section.target("one added package ≤ 0.15x a cold build", fmt_ratio(plus_ratio),
                       None if plus_ratio is None else plus_ratio <= 0.15)
        sections.append(section)
    manager = warm_store.get("store")
    if manager is not None:
        manager.teardown()
        bench.managers.remove(manager)
    return sections


# --- 5. disk ----------------------------------------------------------------------------------


def bench_disk(bench: Bench) -> Section:
    section = Section("Disk")
    sm = bench.main
    image = bench.image(BASE)
    record = Path(str(image["path"]))
    layers = layer_dirs(image)
    image_size = du([*layers, record])
    store_before = du([sm.store / "layers", sm.store / "sandboxes"])
    names = [f"bench-disk-{i}" for i in range(DISK_SANDBOXES)]
    create_times: list[float] = []
    exec_times: list[float] = []
    for name in names:
        create_times.append(sm.timed("create", BASE, "--name", name))
        exec_times.append(sm.timed("exec", name, "--", "sh", "-c",
                                   f"head -c 4096 /dev/urandom > /root/{name}.bin"))
    sandbox_dirs = [sm.store / "sandboxes" / name for name in names]
    files = [d / "upper" / "root" / f"{name}.bin" for d, name in zip(sandbox_dirs, names, strict=True)]
    missing = [str(f) for f in files if not f.is_file()]
    own = du(files) if not missing else None
    uppers = du([d / "upper" for d in sandbox_dirs])
    total = du([*layers, record, *sandbox_dirs])
    store_after = du([sm.store / "layers", sm.store / "sandboxes"])
    upper_listing = run_checked(["find", sandbox_dirs[0], "-mindepth", "1", "-printf", "%P %s\n"])
    sm.call("-q", "rm", *names)

    value = ratio(float(total), float(image_size + own)) if own is not None else None
    section.lines.append(f"Ten `sandboxmgr create {BASE} --name ...`, then in each `exec ... sh -c 'head -c 4096 "
                         "/dev/urandom > /root/NAME.bin'`. Sizes are `du -sxc -B1` (hard links once).")
    section.lines.append("")
    rows = [
        ["the image (its layers and record)", fmt_size(image_size)],
        ["the ten files written (their own changes)",
         fmt_size(own) if own is not None else f"n/a: not found in the upper dirs: {missing[0]}"],
        ["the ten upper dirs (files + copied-up directories)", fmt_size(uppers)],
        ["image + ten sandbox dirs, measured together", fmt_size(total)],
        ["overhead per sandbox beyond its file",
         fmt_size((total - image_size - (own or 0)) / DISK_SANDBOXES)],
        ["store's layers/ + sandboxes/, before → after", f"{fmt_size(store_before)} → {fmt_size(store_after)}"],
        ["`create` median / `exec` (write a file) median",
         f"{fmt_time(statistics.median(create_times))} / {fmt_time(statistics.median(exec_times))}"],
    ]
    section.lines += md_table(["what", "size"], rows)
    section.lines.append("")
    section.lines.append("What one sandbox holds (`find -printf '%P %s'`): "
                         + ", ".join(f"`{line}`" for line in upper_listing.strip().splitlines()))
    section.target("ten sandboxes ≤ 1.05x the image plus their own changes", fmt_ratio(value) if value is None
                   else f"{value:.4f}x", None if value is None else value <= 1.05)
    return section


# --- 6. loop ----------------------------------------------------------------------------------


def processes() -> dict[int, tuple[str, str]]:
    """Live processes: pid -> (command line, environment), as far as they can be read."""
    found: dict[int, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().decode(errors="replace")
        except OSError:
            continue
        found[int(entry)] = (cmdline, environ)
    return found


def bench_loop(bench: Bench) -> Section:
    section = Section("Loop")
    sm = bench.main
    bench.image(BASE)
    count = bench.rounds.loop
    marker = secrets.token_hex(8)
    env = dict(bench.env, SANDBOXMGR_BENCH_MARK=marker)
    argv = sm.argv("run", BASE, "--", "true")
    bench.ensure_tools(["bwrap"])
    root = str(bench.rootfs_copy())
    peer_argv = ["bwrap", "--bind", root, "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all", "true"]

    mounts_before = {mount_identity(line) for line in mount_lines()}
    pids_before = set(processes())
    failures: list[str] = []
    log(f"loop: {count} x {shown(argv)}")
    start = time.perf_counter()
    for _ in range(count):
        try:
            timed(argv, env=env)
        except Failed as exc:
            failures.append(str(exc))
    elapsed = time.perf_counter() - start
    new_mounts = [m for m in (mount_identity(line) for line in mount_lines()) if m not in mounts_before]
    ours_mounts = [m for m in new_mounts if str(bench.work) in m]
    leaked = [f"{pid}: {cmd}" for pid, (cmd, environ) in processes().items()
              if pid not in pids_before and pid != os.getpid()
              and (marker in environ or str(sm.store) in cmd)]
    tmp_left = sorted(p.name for p in (sm.store / "tmp").iterdir()) if (sm.store / "tmp").is_dir() else []
    locks_left = sorted(p.name for p in (sm.store / "locks").glob("tmp-*"))

    peer_elapsed: float | None = None
    if "bwrap" not in bench.missing:
        start = time.perf_counter()
        try:
            for _ in range(count):
                timed(peer_argv, env=bench.env)
            peer_elapsed = time.perf_counter() - start
        except Failed as exc:
            log(f"bwrap loop: {exc}")

    def listed(items: list[str]) -> str:
        return "none" if not items else f"{len(items)}: " + "; ".join(f"`{i}`" for i in items[:5])

    rows = [
        ["runs (failed)", f"{count} ({len(failures)})" + (f": {failures[0]}" if failures else "")],
        ["wall time", fmt_time(elapsed)],
        ["throughput", f"{count / elapsed:.1f} runs/s ({fmt_time(elapsed / count)} per run)"],
        ["same loop with bwrap, for scale",
         f"{count / peer_elapsed:.1f} runs/s" if peer_elapsed else f"n/a: {bench.missing.get('bwrap', 'failed')}"],
        ["new mounts under the bench dir (host's mountinfo)", listed(ours_mounts)],
        ["other new mounts on the host meanwhile (not sandboxmgr's)", str(len(new_mounts) - len(ours_mounts))],
        ["entries left in STORE/tmp", listed(tmp_left)],
        ["tmp locks left in STORE/locks", listed(locks_left)],
        ["processes left (marked by an environment variable, or naming the store)", listed(leaked)],
    ]
    section.lines.append(f"`sandboxmgr run {BASE} -- true`, {count} times in a row, then the host's "
                         "`/proc/self/mountinfo`, the store's `tmp/` and `locks/`, and every process are "
                         "compared with before.")
    section.lines.append("")
    section.lines += md_table(["", ""], rows)
    clean = not (ours_mounts or tmp_left or locks_left or leaked or failures)
    section.target(f"{count} ephemeral runs leave no mount, temp dir or process",
                   "clean" if clean else "leaks or failures (see Loop)", clean)
    section.target("throughput (reported, no target)", f"{count / elapsed:.1f} runs/s", None)
    return section


# --- the report ---------------------------------------------------------------------------------


def report(machine_info: list[tuple[str, str]], sections: list[Section], rounds: Rounds, quick: bool) -> str:
    lines = [HEADER.rstrip(), "", "## Machine and run", ""]
    lines += md_table(["", ""], [[k, v] for k, v in machine_info])
    lines.append("")
    lines.append(f"Rounds: entry {rounds.entry}, create {rounds.create}, builds {rounds.builds}, "
                 f"loop {rounds.loop}" + (" (--quick)" if quick else "") + ".")
    lines += ["", "## Targets", ""]
    lines += md_table(["benchmark", "target", "measured", "verdict"],
                      [[t.benchmark, t.goal, t.measured, verdict(t.met)] for s in sections for t in s.targets])
    for number, section in enumerate(sections, 1):
        lines += ["", f"## {number}. {section.title}", "", *section.lines]
        if section.notes:
            lines += ["", *section.notes]
    return "\n".join(lines) + "\n"


def default_sandboxmgr() -> Path:
    for candidate in (REPO / ".venv" / "bin" / "sandboxmgr", Path("/tmp/venvtest/bin/sandboxmgr")):
        if candidate.exists():
            return candidate
    found = shutil.which("sandboxmgr")
    return Path(found) if found else REPO / ".venv" / "bin" / "sandboxmgr"


def interpreter_of(script: Path) -> Path:
    """The python of a console script (its #! line), else this one."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return Path(sys.executable)
    if first.startswith("#!") and "python" in first:
        return Path(first[2:].strip().split()[0])
    return Path(sys.executable)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test (~3 minutes)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated benchmarks to run, of {','.join(BENCHMARKS)}")
    parser.add_argument("--sandboxmgr", type=Path, default=default_sandboxmgr(),
                        help="the sandboxmgr to measure (default: .venv's, else /tmp/venvtest's)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to make the bench's temporary directory (default: $TMPDIR or /tmp)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results file (default: {RESULTS.relative_to(REPO)} for a full run; "
                             "a --quick or --only run only prints them)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (to look at logs)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in str(args.only).split(",") if name.strip()]
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown or not wanted:
        parser.error(f"--only: unknown benchmark {', '.join(unknown) or '(none)'}; choose from "
                     f"{', '.join(BENCHMARKS)}")
    args.only = wanted
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, mounts, debootstrap)", file=sys.stderr)
        return 2
    exe = Path(os.path.abspath(args.sandboxmgr))
    if not exe.exists():
        print(f"bench: no sandboxmgr at {exe}; make venv first, or pass --sandboxmgr", file=sys.stderr)
        return 2
    python = interpreter_of(exe)
    rounds = QUICK if args.quick else FULL
    full_run = not args.quick and list(args.only) == list(BENCHMARKS)
    output: Path | None = args.output or (RESULTS if full_run else None)
    sections: list[Section] = []
    started = time.monotonic()
    code_before = code_state()
    work = Path(tempfile.mkdtemp(prefix="sandboxmgr-bench-", dir=args.workdir)).resolve()
    log(f"working in {work}; sandboxmgr {exe}; python {python}")
    bench = Bench(exe, python, work, rounds)
    wanted = set(args.only)
    steps: list[tuple[str, Callable[[], list[Section]]]] = [
        ("entry", lambda: [bench_entry(bench)]),
        ("create", lambda: [bench_create(bench)]),
        ("cold+warm", lambda: bench_builds(bench, "cold" in wanted, "warm" in wanted)),
        ("disk", lambda: [bench_disk(bench)]),
        ("loop", lambda: [bench_loop(bench)]),
    ]
    status = 0
    try:
        for name, step in steps:
            if not wanted & set(name.split("+")):
                continue
            try:
                sections += step()
            except (BenchError, Failed) as exc:
                log(f"{name}: stopped: {exc}")
                failed = Section(name.replace("+", " and ").capitalize())
                failed.lines.append(f"The benchmark stopped: {exc}")
                failed.target("(the benchmark did not complete)", f"error: {exc}", None)
                sections.append(failed)
                status = 1
    finally:
        try:
            bench.teardown(keep=args.keep)
        except BenchError as exc:
            log(f"cleanup: {exc}")
            status = 1
    machine_info = machine(python, exe, code_before)
    text = report(machine_info, sections, rounds, args.quick)
    print(text)
    if output is not None:
        output.write_text(text)
        log(f"wrote {output}")
    log(f"done in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
