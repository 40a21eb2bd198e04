"""Entry: enter a built image and run `true`, against unshare+chroot, bwrap, systemd-nspawn and the floor.

sandboxmgr's rows: ``run`` (ephemeral), ``exec`` into a running named sandbox (a join: no mount,
no unmount), ``exec`` into a stopped one (start, join, stop: a mount and an unmount), and ``run``
without the seccomp filter; all of them idle, then right after unflushed writes in the running
sandbox (bench/live.py keeps the two named sandboxes and checks each row took its path).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import (
    BASE,
    TIMING_HEADERS,
    UNCONFINED,
    Candidate,
    Section,
    alternate,
    fmt_ratio,
    fmt_size,
    fmt_time,
    log,
    md_table,
    ratio,
    shown,
    tail,
    timed,
    timing_rows,
)
from bench.live import RUNNING_SANDBOX, STOPPED_SANDBOX, LiveSandboxes
from bench.workspace import Bench, layer_dirs

# The target for the distance to the floor: what sandboxmgr adds to its interpreter's start-up.
FLOOR_MARGIN = 0.015
# Issue 15's targets for `exec -- true` into a running sandbox: against systemd-nspawn on the same root, and
# right after the unflushed writes against its own idle time.
JOINED_VS_NSPAWN = 0.5
JOINED_UNDER_WRITES = 1.2
EXEC_RUNNING = "sandboxmgr exec, running"
EXEC_STOPPED = "sandboxmgr exec, stopped"


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


def entry_under_writes(bench: Bench, live: LiveSandboxes, clean: dict[str, Candidate],
                       section: Section) -> list[str]:
    """Entry again, each command right after DIRTY_MB of unflushed writes (untimed) in the running sandbox."""
    dirty = live.write_inside(DIRTY_MB)
    layers = [d / "diff" for d in layer_dirs(bench.image(BASE))]

    def after_writes(c: Candidate) -> Callable[[], None]:
        def prepare() -> None:
            if c.prepare is not None:  # its own check first, so that the measurement follows the writes
                c.prepare()
            dirty()
        return prepare

    candidates = [Candidate(c.label, c.command, c.measure, prepare=after_writes(c), finish=c.finish,
                            is_peer=c.is_peer, failure=c.failure)
                  for c in clean.values() if not c.label.startswith("python3")]
    candidates += [
        Candidate("bare overlayfs + chroot", "unshare -m: mount -t overlay (lowerdir=the image's layer) + chroot "
                  "true; rm -rf upper, work", lambda: bare_overlay(layers, bench.scratch / "overlay-entry"),
                  prepare=dirty),
        Candidate("same, overlay mounted with -o volatile", "the same with `volatile`",
                  lambda: bare_overlay(layers, bench.scratch / "overlay-entry", volatile=True), prepare=dirty),
    ]
    rounds = max(2, bench.rounds.entry // 6)
    log(f"entry under writes: {rounds} alternating rounds of {len(candidates)} commands, "
        f"each after {DIRTY_MB} MB of unflushed writes")
    alternate(candidates, rounds, warmup=False)
    rows = []
    for c in candidates:
        before = clean.get(c.label)
        slower = fmt_ratio(ratio(c.median, before.median)) if before is not None else ""
        rows.append([c.label, fmt_time(c.median) if c.failure is None else f"n/a: {c.failure}",
                     fmt_time(min(c.times)) if c.times and c.failure is None else "", slower])
    under_writes_targets(section, clean, {c.label: c for c in candidates})
    lines = ["### Entry while the disk has unflushed writes", "",
             f"The same commands, each right after {DIRTY_MB} MB written in the running sandbox "
             f"(`{RUNNING_SANDBOX}`, by a joined `exec`, untimed: `rm` of the last round's file, `sync`, then "
             f"`head -c {DIRTY_MB}M /dev/zero > /root/bench-dirty.bin`, not synced): dirty pages in its upper "
             "dir, on the store's filesystem — what a build farm's concurrent builds leave. A copy-on-write "
             "sandbox pays here when its overlayfs is unmounted (the namespace's end): overlayfs syncs the "
             "whole upper filesystem then, unless it was mounted `volatile` (Linux 5.10+), which an ephemeral "
             "sandbox, whose upper dir is thrown away, can afford. An `exec` into a running sandbox joins it "
             "and unmounts nothing; into a stopped one it mounts, and unmounts when it stops it again.",
             ""]
    lines += md_table(["", "median", "min", "slower than without the writes"], rows)
    if live.dirty:
        lines += ["", f"Dirty page cache right after each round of writes (`/proc/meminfo`): median "
                  f"{fmt_size(statistics.median(live.dirty))}, least {fmt_size(min(live.dirty))}."]
    return lines


def under_writes_targets(section: Section, clean: dict[str, Candidate], dirty: dict[str, Candidate]) -> None:
    idle, loaded = clean[EXEC_RUNNING], dirty[EXEC_RUNNING]
    value = ratio(loaded.median, idle.median)
    shown_ = (f"{fmt_ratio(value)} ({fmt_time(loaded.median)} against {fmt_time(idle.median)})"
              if value is not None else f"n/a: {loaded.failure or idle.failure}")
    section.target(f"`{EXEC_RUNNING}` right after {DIRTY_MB} MB of unflushed writes ≤ {JOINED_UNDER_WRITES}x "
                   "its idle time", shown_, None if value is None else value <= JOINED_UNDER_WRITES)
    stopped = ratio(dirty[EXEC_STOPPED].median, clean[EXEC_STOPPED].median)
    section.reported(f"`{EXEC_STOPPED}` (start + join + stop) right after {DIRTY_MB} MB of unflushed writes, "
                     "against its idle time", fmt_ratio(stopped))


def command_candidate(label: str, argv: list[str], env: dict[str, str], *, is_peer: bool = True,
                      failure: str | None = None) -> Candidate:
    return Candidate(label, shown(argv), lambda: timed(argv, env=env), is_peer=is_peer, failure=failure)


def sandboxmgr_candidates(bench: Bench, live: LiveSandboxes) -> list[Candidate]:
    """run, exec into the running sandbox, exec into the stopped one, and run without the seccomp filter."""
    sm, env = bench.main, bench.env
    run = command_candidate("sandboxmgr run", sm.argv("run", BASE, "--", "true"), env, is_peer=False)
    joined = command_candidate(EXEC_RUNNING, sm.argv("exec", RUNNING_SANDBOX, "--", "true"), env, is_peer=False)
    joined.finish = live.check_running
    stopped = command_candidate(EXEC_STOPPED, sm.argv("exec", STOPPED_SANDBOX, "--", "true"), env, is_peer=False)
    stopped.prepare = live.check_stopped
    unconfined = command_candidate("sandboxmgr run, seccomp: unconfined",
                                   sm.argv("run", sm.ref(UNCONFINED), "--", "true"), env, is_peer=False)
    return [run, joined, stopped, unconfined]


def bench_entry(bench: Bench) -> Section:
    section = Section("Entry")
    bench.ensure_tools(["bwrap", "systemd-nspawn"])
    bench.image(BASE)
    root = str(bench.rootfs_copy())
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
    live = LiveSandboxes(bench.main)
    try:
        live.setup()
        measure_entry(bench, live, section, [floor, no_site, *peer_candidates])
        for args in (["run", BASE, "--", "true"], ["exec", RUNNING_SANDBOX, "--", "true"]):
            profile = import_profile(bench, args)  # the exec: while the sandbox still runs
            if profile:
                section.lines.append("")
                section.lines += profile
    finally:
        live.teardown()
    return section


def measure_entry(bench: Bench, live: LiveSandboxes, section: Section, others: list[Candidate]) -> None:
    """The entry rounds, idle then under writes, with the live sandboxes set up."""
    floor, peer_candidates = others[0], others[2:]
    ours = sandboxmgr_candidates(bench, live)
    candidates = [*others, *ours]
    log(f"entry: {bench.rounds.entry} alternating rounds of {len(candidates)} commands")
    alternate(candidates, bench.rounds.entry, warmup=True)

    section.lines.append(f"R is a private copy (`cp -a`) of the bottom layer of `{BASE}` (minbase); "
                         f"IMAGE is `{BASE}`; all commands run `true`. `{EXEC_RUNNING}` joins `{RUNNING_SANDBOX}`, "
                         "started (`sandboxmgr start`) before the first round and stopped after the last "
                         "(its PID 1 checked after each exec: the same process throughout), so each exec "
                         "joins it by the join ticket its start wrote (ticket.py: no JSON, no config); "
                         f"`{EXEC_STOPPED}` goes into `{STOPPED_SANDBOX}`, never started, so each exec starts "
                         "it, joins it and stops it again (checked stopped before each). The floor is "
                         "sandboxmgr's own interpreter (its venv) with the flags of the console script's `#!` "
                         f"line (`{shown(bench.python)}`); `-S` (no `site`: no site-packages, no editable-install "
                         "import hook) shows what the venv's start-up adds to it.")
    section.lines.append("")
    section.lines += md_table(TIMING_HEADERS, timing_rows(candidates))
    section.lines.append("")
    section.lines += ratio_table(floor, peer_candidates, ours[:3])
    section.lines.append("")
    run, unconfined = ours[0], ours[3]
    if run.median is not None and unconfined.median is not None:
        cost = run.median - unconfined.median
        section.lines.append(f"The seccomp filter's cost: `sandboxmgr run` {fmt_time(run.median)} with the default "
                             f"filter, {fmt_time(unconfined.median)} with `seccomp: unconfined` (`{UNCONFINED}`, "
                             f"the same image and fast path): {'+' if cost >= 0 else '-'}{fmt_time(abs(cost))}.")
    entry_targets(section, floor, peer_candidates, ours[:3])

    section.lines.append("")
    section.lines += entry_under_writes(bench, live, {c.label: c for c in candidates}, section)


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
    """Against the slowest peer a target (for the joined exec, issue 15's: half its time); against the fast
    ones the ratio, reported; and the distance to the interpreter's floor, which is what a Python tool can
    close. ``ours``: run, exec into the running sandbox, exec into the stopped one."""
    by_label = {c.label: c for c in peers}
    nspawn = by_label["systemd-nspawn"]
    for mine in ours:
        joined = mine.label == EXEC_RUNNING
        value = ratio(mine.median, nspawn.median)
        goal = (f"≤ {JOINED_VS_NSPAWN}x systemd-nspawn" if joined
                else "faster than systemd-nspawn (ratio < 1.0)")
        met = None if value is None else (value <= JOINED_VS_NSPAWN if joined else value < 1.0)
        section.target(f"`{mine.label}` {goal}",
                       fmt_ratio(value) + ("" if nspawn.failure is None else f" (nspawn n/a: {nspawn.failure})"), met)
    for mine in ours[:2]:
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


def import_profile(bench: Bench, args: list[str]) -> list[str]:
    """Where `sandboxmgr ARGS` spends its time before it does anything: python -X importtime."""
    argv = [*bench.python, "-X", "importtime", str(bench.exe), "--store", str(bench.main.store), *args]
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
    lines = [f"Where the time goes: `python -X importtime` of `sandboxmgr {shown(args)}` "
             f"(median of {len(totals)} runs; importtime itself adds some overhead). Imports take "
             f"{statistics.median(totals) / 1000:.0f} ms in all; the biggest top-level imports:", ""]
    rows = [[f"`{name}`", f"{micros / 1000:.1f} ms"] for micros, name in medians[:8]]
    lines += md_table(["module (top level, with what it imports)", "cumulative"], rows)
    own = sorted(((statistics.median(v), k) for k, v in self_times.items()), reverse=True)
    lines += ["", "The single modules that cost most (their own time, without what they import):", ""]
    lines += md_table(["module", "self"], [[f"`{name}`", f"{micros / 1000:.1f} ms"] for micros, name in own[:12]])
    return lines


