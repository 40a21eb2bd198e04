#!/usr/bin/env python3
"""sandboxmgr's benchmark suite: sandboxmgr against the tools it competes with.

Run as root: ``python -m bench [--quick] [--rounds N] [--only entry,create,...]`` (``make bench``
runs the whole suite; ``python bench/run.py`` works too). Where a benchmark has peers, they and
sandboxmgr run in the same run on the same machine, alternately where RESULTS.md says so, and
it reports medians, minimums and ratios; nothing here asserts a timing. A full run writes
bench/RESULTS.md.

Benchmarks (names for ``--only``), one module each:

entry   enter a built image and run ``true``: ``sandboxmgr run``, ``exec`` into a running
        sandbox and ``exec`` into a stopped one vs unshare+chroot, bwrap, systemd-nspawn, and
        the interpreter's own start-up; and ``run`` without the seccomp filter, for what the
        filter costs; idle and right after unflushed writes (bench/entry.py, bench/live.py)
create  a throw-away sandbox vs untarring the same root filesystem and vs a hard-link
        copy of it, two image sizes (bench/create.py)
cold    a cold build (empty store, empty package cache) vs debootstrap and mmdebstrap,
        on equal terms (bench/cold.py)
warm    a rebuild with the package cache, and a rebuild after adding one package
        (bench/warm.py; cold and warm share the loop in bench/builds.py)
disk    ten named sandboxes over one image: disk used vs the image plus their changes (bench/disk.py)
loop    ephemeral runs in a row: leaked mounts, temp dirs, processes; throughput (bench/loop.py)
rootless an ordinary user's cold build and entry next to root's, bwrap as that user and
        systemd-nspawn (bench/rootless.py)
package `package build` of GNU hello, cold and warm, vs the same build by hand in a `run`
        sandbox and vs pbuilder (bench/package.py)

What they share is in bench/common.py (running and timing commands, candidates, results) and
bench/workspace.py (stores, profiles, the peers' root); bench/report.py writes RESULTS.md.
Everything happens under a temporary directory of its own (``--workdir``), with stores of
its own; it is removed at the end, after checking that nothing is mounted under it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if not __package__:  # run as a script (python bench/run.py): the package is its directory
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.builds import bench_builds
from bench.common import BENCHMARKS, REPO, RESULTS, BenchError, Failed, Section, log
from bench.create import bench_create
from bench.disk import bench_disk
from bench.entry import bench_entry
from bench.loop import bench_loop
from bench.package import bench_package
from bench.report import code_state, machine, report
from bench.rootless import bench_rootless
from bench.workspace import FULL, QUICK, Bench


def default_sandboxmgr() -> Path:
    candidate = REPO / ".venv" / "bin" / "sandboxmgr"
    if candidate.exists():
        return candidate
    found = shutil.which("sandboxmgr")
    return Path(found) if found else candidate


def interpreter_of(script: Path) -> list[str]:
    """The python of a console script and the flags on its #! line, else this python."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0].decode()
    except (OSError, UnicodeDecodeError):
        return [sys.executable]
    if first.startswith("#!") and "python" in first:
        return first[2:].strip().split()
    return [sys.executable]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke test (~3 minutes)")
    parser.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="N rounds of every benchmark (the loop: N runs), e.g. 2 to try one out")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated benchmarks to run, of {','.join(BENCHMARKS)}")
    parser.add_argument("--sandboxmgr", type=Path, default=default_sandboxmgr(),
                        help="the sandboxmgr to measure (default: the checkout's .venv, else the one on PATH)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to make the bench's temporary directory (default: $TMPDIR or /tmp)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"results file (default: {RESULTS.relative_to(REPO)} for a full run; "
                             "a --quick, --rounds or --only run only prints them)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (to look at logs)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in str(args.only).split(",") if name.strip()]
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown or not wanted:
        parser.error(f"--only: unknown benchmark {', '.join(unknown) or '(none)'}; choose from "
                     f"{', '.join(BENCHMARKS)}")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    args.only = wanted
    return args


def steps(bench: Bench, wanted: set[str]) -> list[tuple[str, Callable[[], list[Section]]]]:
    return [
        ("entry", lambda: [bench_entry(bench)]),
        ("create", lambda: [bench_create(bench)]),
        ("cold+warm", lambda: bench_builds(bench, "cold" in wanted, "warm" in wanted)),
        ("disk", lambda: [bench_disk(bench)]),
        ("loop", lambda: [bench_loop(bench)]),
        ("rootless", lambda: [bench_rootless(bench)]),
        ("package", lambda: [bench_package(bench)]),
    ]


def run_all(bench: Bench, wanted: set[str], keep: bool) -> tuple[list[Section], int]:
    sections: list[Section] = []
    status = 0
    try:
        for name, step in steps(bench, wanted):
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
            bench.teardown(keep=keep)
        except BenchError as exc:
            log(f"cleanup: {exc}")
            status = 1
    return sections, status


def _exit_on(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    # A bench stopped by kill (or its terminal closing) unwinds as one stopped by Ctrl-C: every
    # step's finally runs, so no sandbox it started is left running and no mount is left behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on)
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
    how = "--quick" if args.quick else ""
    if args.rounds is not None:
        rounds = rounds.every(args.rounds)
        how = f"--rounds {args.rounds}"
    full_run = not how and list(args.only) == list(BENCHMARKS)
    output: Path | None = args.output or (RESULTS if full_run else None)
    started = time.monotonic()
    code_before = code_state()
    work = Path(tempfile.mkdtemp(prefix="sandboxmgr-bench-", dir=args.workdir)).resolve()
    log(f"working in {work}; sandboxmgr {exe}; python {' '.join(python)}")
    bench = Bench(exe, python, work, rounds)
    sections, status = run_all(bench, set(args.only), args.keep)
    text = report(machine(python, exe, code_before), sections, rounds, how)
    print(text)
    if output is not None:
        output.write_text(text)
        log(f"wrote {output}")
    log(f"done in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
