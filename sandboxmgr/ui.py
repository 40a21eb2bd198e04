"""What the command line shows: progress lines, the matrix's live view, tables and JSON.

Progress goes to stderr, results to stdout: ``sandboxmgr images --json | jq`` gets
the JSON alone. On a terminal, progress redraws one line (a matrix: one line per
profile); off a terminal (a CI log), it prints a line per change of phase instead.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from sandboxmgr.limits import format_bytes
from sandboxmgr.progress import Live

if TYPE_CHECKING:
    from pathlib import Path

    from sandboxmgr.doctor import Finding
    from sandboxmgr.matrix import Result
    from sandboxmgr.package import PackageResult


class ProgressLine:
    """One updating status line on a terminal, redrawn with every message, live counts
    (``packages: unpacking 5/34 make``) too; off a terminal, a plain line per phase and
    no live counts (sandboxmgr/progress.py)."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_phase = ""
        self.shown = False

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        live = isinstance(message, Live)
        # A build step's output reaches the status line (its latest line, package names): no
        # escape sequence or control character of its own may reach the user's terminal.
        message = "".join(c if c.isprintable() else "?" for c in message)
        if self.tty:
            width = _columns() - 1
            sys.stderr.write(f"\r\x1b[K[{self.label}] {message}"[: width + 4])
            sys.stderr.flush()
            self.shown = True
            return
        # Off a terminal, a line per package or percent would be a wall of log.
        if live or message == self.last_phase:
            return
        self.last_phase = message
        print(f"[{self.label}] {message}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


def _columns() -> int:
    """The terminal's width; 80 when it says 0 (a serial console, a new pty) or cannot say."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except OSError:
        return 80


class MatrixView:
    """The live view of matrix and package jobs (runner.Outcome): one line per profile with
    its state and elapsed time on a terminal; a plain, prefixed line per state change otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.drawn = 0
        self.reported: dict[str, str] = {}

    def __call__(self, results: list[Any]) -> None:
        if self.quiet:
            return
        import time

        now = time.monotonic()
        if not self.tty:
            for r in results:
                if self.reported.get(r.name) != r.status and r.status != "pending":
                    self.reported[r.name] = r.status
                    shown = f" ({r.shown})" if r.shown else ""
                    extra = f" in {r.duration:.1f}s{shown}" if r.duration is not None else ""
                    click.echo(f"[{r.name}] {r.status}{extra}", err=True)
            return
        lines = []
        for r in results:
            elapsed = r.duration if r.duration is not None else (now - r.started if r.started else 0.0)
            shown = f" {r.shown}" if r.shown else ""
            lines.append(f"  {r.name:<28} {r.status:<10} {elapsed:7.1f}s{shown}")
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}F")
        sys.stderr.write("".join(f"\x1b[2K{line}\n" for line in lines))
        sys.stderr.flush()
        self.drawn = len(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


# --- each listing's table ------------------------------------------------------------------------


def profiles_table(rows: list[dict[str, Any]]) -> None:
    print_table(
        ["PROFILE", "DISTRO", "RELEASE", "ARCH", "BUILT", "ALIASES", "DESCRIPTION"],
        [[r["name"], r["distro"], r["release"], r["arch"], "?" if r["built"] is None else "yes" if r["built"] else "no",
          ",".join(r["aliases"]), r["description"] if not r["error"] else f"INVALID: {r['error'].splitlines()[0]}"]
         for r in rows],
    )


def images_table(rows: list[dict[str, Any]], show_layers: bool) -> None:
    print_table(
        ["PROFILE", "DISTRO", "RELEASE", "SIZE", "SHARED", "UNIQUE", "LAYERS", "BUILT AT", "KEY"],
        [[r["profile"] + (" (older)" if r["outdated"] else ""), r["distro"], r["release"],
          *(format_bytes(r.get(field), decimal=True) for field in ("size", "shared_size", "unique_size")),
          str(len(r["layers"])), r.get("built_at", "?"), r["key"]]
         for r in rows],
    )
    if show_layers:
        for row in rows:
            click.echo(f"\n{row['profile']} ({row['key']}):")
            for layer in row["layers"]:
                shared = f"  shared with {', '.join(layer['shared_with'])}" if layer["shared_with"] else ""
                size = format_bytes(layer["size"], decimal=True)
                click.echo(f"  {layer['key']}  {size:>8}  {layer['label']}{shared}")


def df_table(found: dict[str, Any], verbose: bool) -> None:
    """``sandboxmgr df``: a row per kind, the total, and with ``verbose`` each item."""
    def size(value: int | None) -> str:
        return format_bytes(value, decimal=True)

    rows = [[row["type"], str(row["total"]), str(row["active"]), size(row["size"]), size(row["reclaimable"])]
            for row in found["types"]]
    rows.append(["total (each file once)", "", "", size(found["size"]), size(found["reclaimable"])])
    print_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows)
    if not verbose:
        return
    for row in found["types"]:
        if not row["items"]:
            continue
        click.echo(f"\n{row['type']}:")
        for item in row["items"]:
            what = "  ".join(f"{name}={_shown(name, value)}" for name, value in item.items() if name != "size")
            click.echo(f"  {size(item['size']):>8}  {what}")


def _shown(name: str, value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if name.endswith("_size"):
        return format_bytes(value, decimal=True)
    return str(value)


def sandboxes_table(rows: list[dict[str, Any]]) -> None:
    print_table(
        ["NAME", "PROFILE", "IMAGE", "CREATED", "CHANGES", "STATE", "PROCS"],
        [[r["name"], r["profile"], r["image"], r["created"], format_bytes(r["changes_size"], decimal=True),
          _state(r), "-" if r["processes"] is None else str(r["processes"])] for r in rows],
    )


def ps_table(rows: list[dict[str, Any]]) -> None:
    """``ps``: what runs, and since when (the objects of ``ls --json``)."""
    print_table(["NAME", "PROFILE", "COMMAND", "STATE", "PROCS"],
                [[r["name"], r["profile"], " ".join(r.get("command") or ()) or "-", _state(r),
                  "-" if r["processes"] is None else str(r["processes"])] for r in rows])


def _state(row: dict[str, Any]) -> str:
    """``running since TIME``, ``exited (CODE) at TIME``, or ``stopped`` (never ran)."""
    if row["state"] == "running":
        return f"running since {row['started']}"
    if row["finished"]:
        code = "?" if row["exit_code"] is None else row["exit_code"]
        return f"exited ({code}) at {row['finished']}"
    return "stopped"


def findings_table(findings: list[Finding], store: Path) -> None:
    """What the doctor found (and fixed), or that there is nothing."""
    if not findings:
        click.echo(f"nothing left over: no stray mounts, temporary directories, locks, cgroups "
                   f"or processes, and the store is private ({store})")
        return
    print_table(["KIND", "WHAT", "DETAIL"],
                [[f.kind, f.what, f.detail + (" - fixed" if f.fixed else f" - NOT fixed: {f.error}"
                                              if f.error else "")] for f in findings])


def package_table(results: list[PackageResult]) -> None:
    """A package build's results, then why each failed build failed and where a kept one is."""
    print_table(["PROFILE", "RESULT", "STAGE", "TIME", "RESULTS"],
                [[r.name, r.status, r.stage or "-", "-" if r.duration is None else f"{r.duration:.1f}s",
                  r.results or "-"] for r in results])
    for r in results:
        if r.stage:
            click.echo(f"{r.name}: {r.stage}: {r.reason}" + (f" (blocking: {', '.join(r.packages)})"
                                                              if r.packages else ""))
        if r.sandbox:
            click.echo(f"{r.name}: kept as sandbox {r.sandbox}; step into it with: sandboxmgr shell {r.sandbox}")


def results_table(results: list[Result]) -> None:
    """A matrix run's results, then why each failed profile failed and where a kept one is."""
    print_table(["PROFILE", "RESULT", "EXIT", "TIME", "LOG"],
                [[r.name, r.status, "-" if r.exit_code is None else str(r.exit_code),
                  "-" if r.duration is None else f"{r.duration:.1f}s", str(r.log)] for r in results])
    for r in results:
        if r.status == "failed" and r.reason:
            click.echo(f"{r.name}: {r.reason}")
        if r.sandbox:
            click.echo(f"{r.name}: kept as sandbox {r.sandbox}; step into it with: sandboxmgr shell {r.sandbox}")
