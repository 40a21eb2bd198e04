"""Verbs of a named sandbox's life (live.py): start, stop, restart, kill, logs, wait, ps."""

from __future__ import annotations

import sys
from typing import Any

import click

from sandboxmgr import ui
from sandboxmgr.cli.app import App, complete_sandboxes, pass_app, require_root
from sandboxmgr.errors import SandboxError
from sandboxmgr.ui import print_json


@click.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def start(app: App, names: tuple[str, ...]) -> None:
    """Start named sandboxes; each stays running until `stop` (exec joins it)."""
    from sandboxmgr import live

    require_root(app, "start")
    for name in names:
        live.start_verb(app.store, app.store.sandbox(name))
        if not app.quiet:
            click.echo(name)


def _grace(fn: Any) -> Any:
    return click.option("-t", "--time", "seconds", type=click.IntRange(0, 86400), default=10, show_default=True,
                        help="Seconds between SIGTERM and SIGKILL.")(fn)


@click.command()
@_grace
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def stop(app: App, seconds: int, names: tuple[str, ...]) -> None:
    """Stop running sandboxes: SIGTERM to every process, SIGKILL after the grace time."""
    from sandboxmgr import live

    require_root(app, "stop")
    for name in names:
        live.stop(app.store, app.store.sandbox(name), seconds)
        if not app.quiet:
            click.echo(name)


@click.command()
@_grace
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def restart(app: App, seconds: int, names: tuple[str, ...]) -> None:
    """Stop (as `stop`) and start named sandboxes again."""
    from sandboxmgr import live

    require_root(app, "restart")
    for name in names:
        live.stop(app.store, app.store.sandbox(name), seconds)
        live.start_verb(app.store, app.store.sandbox(name))
        if not app.quiet:
            click.echo(name)


@click.command()
@click.option("-s", "--signal", "signal_name", default="KILL", show_default=True, metavar="SIGNAL",
              help="The signal, by name (TERM, SIGHUP) or number; KILL stops the sandbox at once.")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def kill(app: App, signal_name: str, names: tuple[str, ...]) -> None:
    """Send a signal to every process of running sandboxes."""
    from sandboxmgr import live

    require_root(app, "kill")
    sig = _signal(signal_name)
    for name in names:
        live.kill(app.store, app.store.sandbox(name), sig)
        if not app.quiet:
            click.echo(name)


def _signal(text: str) -> Any:
    import signal

    name = text.upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise SandboxError(f"--signal {text!r}: no such signal",
                           hint="give a name (TERM, HUP, KILL) or a number (15)") from None


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Go on printing what it writes until it stops.")
@click.option("--tail", type=click.IntRange(0), metavar="N", help="Only the last N lines.")
@click.argument("name", shell_complete=complete_sandboxes)
@pass_app
def logs(app: App, follow: bool, tail: int | None, name: str) -> None:
    """Print the output of NAME's main command (run -d): kept in the store, 16 MiB at most."""
    from sandboxmgr import live

    require_root(app, "logs")

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    live.logs(app.store, app.store.sandbox(name), write, tail=tail, follow=follow)


@click.command()
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def wait(app: App, names: tuple[str, ...]) -> None:
    """Wait until named sandboxes stop; print each one's exit status (`?` when unknown)."""
    from sandboxmgr import live

    require_root(app, "wait")
    for name in names:
        code = live.wait(app.store, app.store.sandbox(name))
        click.echo("?" if code is None else code)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per process.")
@click.argument("name", shell_complete=complete_sandboxes)
@pass_app
def top(app: App, as_json: bool, name: str) -> None:
    """The processes of a running sandbox, as `docker top`: PID on the host and inside, UID, CPU time, command."""
    from sandboxmgr.catalog import sandbox_processes

    rows = sandbox_processes(app.store, name)
    if as_json:
        print_json(rows)
    else:
        ui.print_table(["PID", "SANDBOX PID", "UID", "STATE", "TIME", "COMMAND"],
                       [[str(r["pid"]), str(r["sandbox_pid"]), str(r["uid"]), r["state"], f"{r['cpu_seconds']:.2f}",
                         r["command"]] for r in rows])


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Stopped sandboxes too.")
@click.option("-q", "--quiet", "names_only", is_flag=True, help="Names only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the objects of `ls --json`).")
@pass_app
def ps(app: App, show_all: bool, names_only: bool, as_json: bool) -> None:
    """List running sandboxes (with -a, all): main command, state, processes."""
    from sandboxmgr.catalog import sandbox_info

    rows = [sandbox_info(app.store, record.name) for record in app.store.sandboxes()]
    rows = [row for row in rows if show_all or row["state"] == "running"]
    if as_json:
        print_json(rows)
    elif names_only:
        for row in rows:
            click.echo(row["name"])
    else:
        ui.ps_table(rows)
