"""What every benchmark uses: constants, running and timing commands, mounts, candidates, results."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "RESULTS.md"
MIRROR = "http://deb.debian.org/debian"
RELEASE = "bookworm"
BASE = "debian-bookworm"  # the shipped minbase profile
BIG = "bench-bookworm-build"  # BASE plus build-essential: the bigger image
PLUS_ONE = "bench-bookworm-plus-one"  # BASE plus one small package
UNCONFINED = "bench-bookworm-unconfined"  # BASE without the seccomp filter: what the filter costs
EXTRA_PACKAGE = "hello"
DISK_SANDBOXES = 10
BENCHMARKS = ("entry", "create", "cold", "warm", "disk", "loop", "rootless", "package")
PEER_PACKAGES = {"bwrap": "bubblewrap", "systemd-nspawn": "systemd-container",
                 "debootstrap": "debootstrap", "mmdebstrap": "mmdebstrap", "eatmydata": "eatmydata"}
SEARCH_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


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
    met: bool | None  # None: could not be measured, or no target (reported only)
    reported_only: bool = False


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def target(self, goal: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(self.title, goal, measured, met))

    def reported(self, what: str, measured: str) -> None:
        """A figure shown among the targets without a goal to meet."""
        self.targets.append(Target(self.title, what, measured, None, reported_only=True))


def verdict(target: Target) -> str:
    if target.reported_only:
        return "reported (no target)"
    return {True: "met", False: "**not met**", None: "n/a"}[target.met]

