"""Entry: enter a built image and run `true`, against unshare+chroot, bwrap, systemd-nspawn and the floor."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import (
    BASE,
    ENTRY_SANDBOX,
    TIMING_HEADERS,
    UNCONFINED,
    Candidate,
    Section,
    alternate,
    fmt_ratio,
    fmt_time,
    log,
    md_table,
    ratio,
    shown,
    tail,
    timed,
    timing_rows,
)
from bench.workspace import Bench, layer_dirs

# The target for the distance to the floor: what sandboxmgr adds to its interpreter's start-up.
FLOOR_MARGIN = 0.015


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
    interpreter, flags = bench.python[0], bench.python[1:]
    floor = command_candidate("python3 -c pass (floor)", [*bench.python, "-c", "pass"], env)
    no_site = command_candidate("python3 -S -c pass (no site)", [interpreter, "-S", *flags, "-c", "pass"], env)
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
                         "interpreter (its venv) with the flags of the console script's `#!` line "
                         f"(`{shown(bench.python)}`); `-S` (no `site`: no site-packages, no editable-install "
                         "import hook) shows what the venv's start-up adds to it.")
    section.lines.append("")
    section.lines += md_table(TIMING_HEADERS, timing_rows(candidates))
    section.lines.append("")
    section.lines += ratio_table(floor, peer_candidates, (run, exec_))
    section.lines.append("")
    if run.median is not None and unconfined.median is not None:
        cost = run.median - unconfined.median
        section.lines.append(f"The seccomp filter's cost: `sandboxmgr run` {fmt_time(run.median)} with the default "
                             f"filter, {fmt_time(unconfined.median)} with `seccomp: unconfined` (`{UNCONFINED}`, "
                             f"the same image and fast path): {'+' if cost >= 0 else '-'}{fmt_time(abs(cost))}.")
    entry_targets(section, floor, peer_candidates, (run, exec_))

    section.lines.append("")
    section.lines += entry_under_writes(bench, {c.label: c for c in candidates})
    sm.call("-q", "rm", ENTRY_SANDBOX)
    profile = import_profile(bench)
    if profile:
        section.lines.append("")
        section.lines += profile
    return section


def ratio_table(floor: Candidate, peers: Sequence[Candidate], ours: Sequence[Candidate]) -> list[str]:
    headers = ["", *(f"vs {c.label}" for c in peers), "above the python floor"]
    rows = []
    for mine in ours:
        cells = [fmt_ratio(ratio(mine.median, c.median)) for c in peers]
        if mine.median is not None and floor.median is not None:
            above = f"+{fmt_time(mine.median - floor.median)} ({fmt_ratio(ratio(mine.median, floor.median))})"
        else:
            above = "n/a"
        rows.append([mine.label, *cells, above])
    return ["Ratios (sandboxmgr's median / the peer's):", "", *md_table(headers, rows)]


def entry_targets(section: Section, floor: Candidate, peers: Sequence[Candidate],
                  ours: Sequence[Candidate]) -> None:
    """Against the slowest peer a target; against the fast ones the ratio, reported; and the distance to
    the interpreter's floor, which is what a Python tool can close."""
    by_label = {c.label: c for c in peers}
    nspawn = by_label["systemd-nspawn"]
    for mine in ours:
        value = ratio(mine.median, nspawn.median)
        section.target(f"`{mine.label}` faster than systemd-nspawn (ratio < 1.0)",
                       fmt_ratio(value) + ("" if nspawn.failure is None else f" (nspawn n/a: {nspawn.failure})"),
                       None if value is None else value < 1.0)
    for mine in ours:
        for label in ("bwrap", "unshare + chroot"):
            peer = by_label[label]
            gap = (f", +{fmt_time(mine.median - peer.median)}"
                   if mine.median is not None and peer.median is not None else "")
            section.reported(f"`{mine.label}` / {label} (a C tool without an interpreter to start)",
                             fmt_ratio(ratio(mine.median, peer.median)) + gap
                             + ("" if peer.failure is None else f" ({label} n/a: {peer.failure})"))
    run = ours[0]
    if run.median is not None and floor.median is not None:
        limit = floor.median + FLOOR_MARGIN
        section.target(f"`{run.label} -- true` ≤ the python floor + {FLOOR_MARGIN * 1000:.0f} ms",
                       f"{fmt_time(run.median)} against {fmt_time(limit)} (floor {fmt_time(floor.median)}, "
                       f"+{fmt_time(run.median - floor.median)})", run.median <= limit)
    else:
        section.target(f"`{run.label} -- true` ≤ the python floor + {FLOOR_MARGIN * 1000:.0f} ms", "n/a", None)


def import_profile(bench: Bench) -> list[str]:
    """Where `sandboxmgr run` spends its time before it does anything: python -X importtime."""
    argv = [*bench.python, "-X", "importtime", str(bench.exe), "--store", str(bench.main.store),
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


