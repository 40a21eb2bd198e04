"""Loop: ephemeral runs in a row, then a check that nothing was left behind."""

from __future__ import annotations

import os
import secrets
import time

from bench.common import BASE, Failed, Section, fmt_time, log, md_table, mount_identity, mount_lines, shown, timed
from bench.workspace import Bench


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


def peer_loop(argv: list[str], count: int, env: dict[str, str]) -> float | None:
    """The same loop with a peer, one after the other (not alternated): its wall time, None if it failed."""
    start = time.perf_counter()
    try:
        for _ in range(count):
            timed(argv, env=env)
    except Failed as exc:
        log(f"{argv[0]} loop: {exc}")
        return None
    return time.perf_counter() - start


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

    peer_elapsed = None if "bwrap" in bench.missing else peer_loop(peer_argv, count, bench.env)

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
                         "compared with before. Then the same loop with bwrap, for scale (not alternated).")
    section.lines.append("")
    section.lines += md_table(["", ""], rows)
    clean = not (ours_mounts or tmp_left or locks_left or leaked or failures)
    section.target(f"{count} ephemeral runs leave no mount, temp dir or process",
                   "clean" if clean else "leaks or failures (see Loop)", clean)
    section.reported("throughput", f"{count / elapsed:.1f} runs/s")
    return section

