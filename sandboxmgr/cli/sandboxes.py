"""Verbs of sandboxes: run, create, exec, shell, ls, inspect, rm."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from sandboxmgr import ui
from sandboxmgr.cli.app import (
    COMMAND_SETTINGS,
    App,
    CommandVerb,
    complete_profiles,
    complete_sandboxes,
    pass_app,
    require_root,
)
from sandboxmgr.errors import SandboxError
from sandboxmgr.ui import print_json

if TYPE_CHECKING:
    from sandboxmgr.config import SandboxConfig
    from sandboxmgr.store import SandboxRecord


# --- running ----------------------------------------------------------------------------------

def _run_options(fn: Any) -> Any:
    for option in reversed([
        click.option("-e", "--env", "env", multiple=True, metavar="K=V",
                     help="Set an environment variable (K alone: the host's value)."),
        click.option("-w", "--workdir", metavar="DIR", help="Working directory inside."),
        click.option("-u", "--user", metavar="USER[:GROUP]", help="Run as this user (name or uid)."),
        click.option("--memory", metavar="SIZE",
                     help="Memory limit, swap included (512M, 2G); the OOM killer acts inside the sandbox."),
        click.option("--pids-limit", metavar="N", help="At most N processes and threads (a fork bomb stops there)."),
        click.option("--cpus", metavar="N", help="CPU time, in CPUs (1.5: one and a half CPUs' worth)."),
        click.option("--security-opt", metavar="OPT", multiple=True,
                     help="no-new-privileges=false lets setuid binaries work (default: true); "
                          "seccomp=unconfined|FILE.json: no system call filter, or a Docker-format one."),
    ]):
        fn = option(fn)
    return fn


def _sandbox_options(fn: Any) -> Any:
    for option in reversed([
        click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro|:O]",
                     help="Bind-mount a host path (read-only with :ro; copy-on-write with :O, as podman: "
                          "the changes stay in the sandbox)."),
        click.option("--hostname", metavar="NAME", help="Host name inside."),
        click.option("--network", type=click.Choice(["host", "none"]),
                     help="host: the host's network (default); none: only loopback."),
        click.option("--userns", type=click.Choice(["host", "auto"]),
                     help="auto: root inside is an unprivileged id outside (a user namespace with an id "
                          "range of its own; an ordinary user's sandboxes always have one); host: root inside "
                          "is root outside (default)."),
    ]):
        fn = option(fn)
    return fn


@click.command(cls=CommandVerb, context_settings=COMMAND_SETTINGS)
@click.option("-i", "--interactive", is_flag=True,
              help="Accepted for docker compatibility: stdin always passes through.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (a pty inside the sandbox).")
@click.option("--name", metavar="NAME", help="Keep the sandbox under this name instead of discarding it.")
@click.option("-d", "--detach", is_flag=True,
              help="Start COMMAND in a named sandbox (--name, else PROFILE-<random>) and print its name; "
                   "its output goes to `sandboxmgr logs`.")
@click.option("--rm", "remove", is_flag=True, help="Accepted for docker compatibility: run is ephemeral by default.")
@click.option("--isolation", type=click.Choice(["pivot_root", "chroot"]), default="pivot_root",
              show_default=True, help="How the root is switched (chroot also drops CAP_SYS_CHROOT).")
@_sandbox_options
@_run_options
@click.argument("profile", shell_complete=complete_profiles)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run(app: App, /, interactive: bool, tty: bool, name: str | None, detach: bool, remove: bool, profile: str,
        command: tuple[str, ...], **flags: Any) -> int:
    """Run COMMAND in a new sandbox over PROFILE's image (built first if needed).

    The sandbox is discarded when the command exits, unless --name keeps it
    (or -d starts it detached, as its main command: the sandbox stops when it ends).
    Without a COMMAND, the image's shell starts (with a pty when stdin is a
    terminal, as `shell` does). Put `--` before a command
    whose options could be taken for sandboxmgr's.
    """
    from sandboxmgr import config, live

    require_root(app, "run")
    if detach:
        _check_detach(remove, tty, command)
    options = config.parse_options(command, config.shell_tty(tty, command), **flags)
    if name is not None and remove:
        raise SandboxError("--rm and --name contradict each other",
                           hint="drop --name for a throw-away sandbox, or --rm to keep it")
    if name is None and not detach:
        return _run_ephemeral(app, profile, options)
    from sandboxmgr.names import check_name

    if name is not None:
        check_name(name, "sandbox name")
    record = _create(app, profile, name, options)
    if detach:
        try:
            live.run_detached(app.store, record, options.argv)
        except SandboxError:
            live.remove(app.store, record, force=True)  # made for this command: nothing half-made is left
            raise
        click.echo(record.name)
        return 0
    # Everything else of the command line is saved with the sandbox (its isolation too).
    return live.run_in(app.store, record, config.options(argv=options.argv, tty=options.tty))


def _check_detach(remove: bool, tty: bool, command: tuple[str, ...]) -> None:
    if remove:
        raise SandboxError("--rm and -d contradict each other: a detached sandbox is kept",
                           hint="remove it when done: sandboxmgr rm -f NAME")
    if tty:
        raise SandboxError("-t and -d contradict each other: a detached command has no terminal",
                           hint="drop -t; follow its output with: sandboxmgr logs -f NAME")
    if not command:
        raise SandboxError("run -d needs a COMMAND", hint="give one: sandboxmgr run -d PROFILE -- CMD ARGS...")


def _run_ephemeral(app: App, ref: str, options: SandboxConfig) -> int:
    """The full CLI's way to the fast path's end: resolve (cached, or load, build, remember), run."""
    from sandboxmgr import sandbox
    from sandboxmgr.locations import profile_dirs
    from sandboxmgr.resolve import resolve_run

    image, saved = resolve_run(app.store, ref, profile_dirs(app.configs), app.image_for)
    return sandbox.run_ephemeral(app.store, image, saved, options)


@click.command()
@click.argument("profile", shell_complete=complete_profiles)
@click.option("--name", metavar="NAME", help="The sandbox's name (default: PROFILE-<random>).")
@_sandbox_options
@_run_options
@pass_app
def create(app: App, /, profile: str, name: str | None, **flags: Any) -> None:
    """Create a persistent sandbox over PROFILE's image; print its name."""
    from sandboxmgr.config import parse_options
    from sandboxmgr.names import check_name

    require_root(app, "create")
    if name is not None:
        check_name(name, "sandbox name")
    options = parse_options((), False, **flags)
    if name is not None and (app.store.sandboxes_dir / name).exists():
        raise SandboxError(f"a sandbox named {name!r} already exists",
                           hint=f"pick another --name, or remove it: sandboxmgr rm {name}")
    click.echo(_create(app, profile, name, options).name)


def _create(app: App, ref: str, name: str | None, options: SandboxConfig) -> SandboxRecord:
    """A named sandbox over the image of the profile ``ref`` (built when needed), or over the
    image imported as ``ref`` when no profile has that name (sandboxmgr import)."""
    import secrets

    from sandboxmgr.resolve import create_imported, create_sandbox, imported

    try:
        loaded = app.registry.load(ref)
    except SandboxError:
        image = imported(app.store, ref, {*app.registry.files(), *app.registry.aliases()})
        if image is None:
            raise
        return create_imported(app.store, name or f"{ref}-{secrets.token_hex(3)}", image, options)
    name = name or f"{loaded.name}-{secrets.token_hex(3)}"
    if (app.store.sandboxes_dir / name).exists():
        raise SandboxError(f"a sandbox named {name!r} already exists",
                           hint=f"pick another --name, or remove it: sandboxmgr rm {name}")
    return create_sandbox(app.store, name, app.image_for(loaded), loaded, options)


@click.command(name="exec", cls=CommandVerb, context_settings=COMMAND_SETTINGS)
@click.option("-i", "--interactive", is_flag=True, help="Accepted for docker compatibility.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("--keep-running", is_flag=True,
              help="If NAME was stopped, leave it running after the command (as `start` does).")
@_run_options
@click.argument("name", shell_complete=complete_sandboxes)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def exec_(app: App, /, interactive: bool, tty: bool, keep_running: bool, name: str, command: tuple[str, ...],
          **flags: Any) -> int:
    """Run COMMAND in the named sandbox NAME; its changes stay there.

    A running sandbox is joined: any number of commands run in it at once, and see each
    other's processes and files. A stopped one is started for the command and stops again
    when the last command in it ends (unless --keep-running)."""
    from sandboxmgr import config, live

    require_root(app, "exec")
    options = config.parse_options(command, tty, **flags)
    app.enter_for(name)
    return live.run_in(app.store, app.store.sandbox(name), options, keep_running=keep_running)


@click.command()
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Log in as this user.")
@click.argument("name", shell_complete=complete_sandboxes)
@pass_app
def shell(app: App, user: str | None, name: str) -> int:
    """Start an interactive shell in the named sandbox NAME."""
    from sandboxmgr import config, live

    require_root(app, "shell")
    options = config.parse_options((), sys.stdin.isatty(), user=user)
    app.enter_for(name)
    return live.run_in(app.store, app.store.sandbox(name), options)


# --- sandboxes --------------------------------------------------------------------------------


@click.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def ls_(app: App, as_json: bool) -> None:
    """List named sandboxes."""
    from sandboxmgr.catalog import sandbox_info

    rows = [sandbox_info(app.store, record.name) for record in app.store.sandboxes()]
    if as_json:
        print_json(rows)
        return
    ui.sandboxes_table(rows)


@click.command()
# Output is JSON either way: --json is accepted (scripts and the README of old pass it), not offered.
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Accepted; the output is JSON either way.")
@click.option("--type", "kind", type=click.Choice(["sandbox", "image"]),
              help="Look NAME up only as a sandbox, or only as an image (a profile or a key).")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def inspect(app: App, as_json: bool, kind: str | None, names: tuple[str, ...]) -> None:
    """Show sandboxes' (or images') metadata as a JSON array, one object per match.

    A NAME is a sandbox's name, else a profile (its images) or an image key."""
    found: list[dict[str, object]] = []
    for name in names:
        found += _inspect_one(app, name, kind)
    print_json(found)


def _inspect_one(app: App, name: str, kind: str | None) -> list[dict[str, object]]:
    from sandboxmgr.catalog import listing, lookup, sandbox_info
    from sandboxmgr.errors import NotFoundError
    from sandboxmgr.profile import is_path_ref

    not_found: NotFoundError | None = None
    if kind != "image" and not is_path_ref(name):  # a profile's file: never a sandbox's name
        try:
            return [{"type": "sandbox", **sandbox_info(app.store, name)}]
        except NotFoundError as missing:
            not_found = missing
    if kind != "sandbox":
        images = lookup(app.store, app.registry, name)
        if images:
            # The row `images --json` shows for it, and what the image was built from.
            rows = {row["key"]: row for row in listing(app.store, app.registry)}
            return [{"type": "image", **rows[r.key], "inputs": r.meta.get("inputs")} for r in images]
    if not_found is None or kind == "image":
        raise NotFoundError(f"no image of {name} in the store", hint="build it: sandboxmgr build " + name)
    raise not_found


@click.command()
@click.option("-f", "--force", is_flag=True, help="Stop a running sandbox at once (SIGKILL) and remove it.")
@click.argument("names", nargs=-1, required=True, shell_complete=complete_sandboxes)
@pass_app
def rm(app: App, force: bool, names: tuple[str, ...]) -> None:
    """Remove named sandboxes and their changes (never what is mounted into them).

    A running sandbox is refused unless --force."""
    from sandboxmgr import live

    require_root(app, "rm")
    for name in names:
        live.remove(app.store, app.store.sandbox(name), force=force)
        if not app.quiet:
            click.echo(f"removed {name}")
