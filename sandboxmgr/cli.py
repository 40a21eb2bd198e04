"""The command line: parse, call the library, print. Errors become exit codes.

Exit codes (as ``docker run``): the command's own status; 125 when sandboxmgr
fails (bad usage, bad profile, failed build, busy, not root); 126 when the
command cannot be run; 127 when it is not found; 128+N when it was killed by
signal N; 130 on Ctrl-C during a build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sandboxmgr import ui
from sandboxmgr.errors import EXIT_MANAGER, SandboxError
from sandboxmgr.limits import format_bytes
from sandboxmgr.ui import MatrixView, ProgressLine, print_json

if TYPE_CHECKING:
    from sandboxmgr.config import SandboxConfig
    from sandboxmgr.profile import Profile, ProfileRegistry
    from sandboxmgr.store import ImageRecord, Store


# --- shared state ---------------------------------------------------------------------------


@dataclass
class App:
    store_path: Path | None = None
    configs: tuple[str, ...] = ()
    quiet: bool = False
    debug: bool = False
    _registry: ProfileRegistry | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    @property
    def registry(self) -> ProfileRegistry:
        if self._registry is None:
            from sandboxmgr.locations import profile_dirs
            from sandboxmgr.profile import ProfileRegistry

            self._registry = ProfileRegistry(profile_dirs(self.configs))
        return self._registry

    @property
    def store(self) -> Store:
        if self._store is None:
            from sandboxmgr.locations import default_store
            from sandboxmgr.store import Store

            self._store = Store(self.store_path or default_store())
        return self._store

    def progress(self, label: str) -> ProgressLine:
        return ProgressLine(label, quiet=self.quiet)

    def image_for(self, profile: Profile) -> ImageRecord:
        from sandboxmgr.images import ensure_image

        line = self.progress(profile.name)
        try:
            return ensure_image(self.store, profile, line)
        finally:
            line.done()


pass_app = click.make_pass_decorator(App)


# --- the command group ------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# readable=False: a store only root may read is an error of the commands that read it, not of
# every command (profiles needs no store).
@click.option("--store", "store_path", type=click.Path(path_type=Path, readable=False), envvar="SANDBOXMGR_STORE",
              help="The store directory (default: sandboxes/ in a checkout, else /var/lib/sandboxmgr).")
@click.option("--configs", multiple=True, type=click.Path(file_okay=False),
              help="An extra profile directory (repeatable; also SANDBOXMGR_CONFIGS, colon-separated).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show every external command line and full tracebacks.")
@click.version_option(package_name="sandboxmgr")
@click.pass_context
def cli(ctx: click.Context, store_path: Path | None, configs: tuple[str, ...], quiet: bool, debug: bool) -> None:
    """Chroot-style sandboxes over distro root filesystems built from YAML profiles.

    An image is a distribution's userland (files and binaries) built from a
    profile; a sandbox is an overlay over it, entered with Linux namespaces.
    It runs on the host's kernel: `uname -r` inside prints the host's.
    """
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="sandboxmgr: debug: %(message)s")
    ctx.obj = App(store_path=store_path, configs=configs, quiet=quiet, debug=debug)


def _require_root(app: App, action: str) -> None:
    """Root check for commands that change the store; also removes what dead runs left."""
    from sandboxmgr.errors import require_root

    require_root(action)
    app.store.clean_leftovers()


# --- profiles and images ---------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def profiles(app: App, as_json: bool) -> None:
    """List profiles: the shipped ones, then system, user and --configs ones."""
    from sandboxmgr.catalog import profile_listing

    rows, readable = profile_listing(app.store, app.registry)
    if not readable:
        click.echo(f"note: BUILT is unknown ('?'): the store {app.store.root} is root's alone; "
                   "run as root to see it", err=True)
    if as_json:
        print_json(rows)
        return
    ui.profiles_table(rows)


@cli.command()
@click.argument("profile")
@click.option("--rebuild", is_flag=True, help="Build every layer again even if the image exists.")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Like --rebuild, and bootstrap afresh even if a kept root matches the mirror's index.")
@pass_app
def build(app: App, profile: str, rebuild: bool, no_cache: bool) -> None:
    """Build the image of PROFILE (run and create do it when needed)."""
    from sandboxmgr.images import ensure_image

    _require_root(app, "build")
    loaded = app.registry.load(profile)
    line = app.progress(loaded.name)
    try:
        record = ensure_image(app.store, loaded, line, rebuild=rebuild or no_cache, use_kept_roots=not no_cache)
    finally:
        line.done()
    if not app.quiet:
        click.echo(f"{loaded.name}: image {record.key} ({format_bytes(record.meta.get('size'), decimal=True)})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--layers", "show_layers", is_flag=True, help="Also list each image's layers.")
@pass_app
def images(app: App, as_json: bool, show_layers: bool) -> None:
    """List built images, and the layers they are made of."""
    from sandboxmgr.catalog import listing

    rows = listing(app.store)
    if as_json:
        print_json(rows)
        return
    ui.images_table(rows, show_layers)


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@pass_app
def rmi(app: App, refs: tuple[str, ...]) -> None:
    """Remove the images of profiles (or image keys), and the layers no other image uses."""
    from sandboxmgr import rootcache
    from sandboxmgr.catalog import lookup

    _require_root(app, "rmi")
    for ref in refs:
        found = lookup(app.store, app.registry, ref)
        if not found:
            raise SandboxError(f"no image of {ref!r} in the store", hint="see 'sandboxmgr images'")
        for record in found:
            layers = app.store.remove_image(record)
            if not app.quiet:
                click.echo(f"removed image {record.key} ({record.profile})"
                           + (f" and {len(layers)} unused layers" if layers else ""))
                if record.layers and record.layers[0] in layers and rootcache.is_kept(app.store, record.layers[0]):
                    click.echo(f"kept: its bootstrap root, for the next build of {record.profile} "
                               "('sandboxmgr prune --cache' removes it)")


@cli.command()
@click.option("--cache", is_flag=True,
              help="Also remove the kept bootstrap roots (the package caches stay).")
@pass_app
def prune(app: App, cache: bool) -> None:
    """Remove older images no sandbox uses and every layer no image uses."""
    from sandboxmgr.catalog import prune as prune_

    _require_root(app, "prune")
    images_removed, layers_removed = prune_(app.store)
    if not app.quiet:
        click.echo(f"removed {len(images_removed)} older images and {len(layers_removed)} unused layers")
    if cache:
        from sandboxmgr import rootcache
        from sandboxmgr.errors import warn

        removed, busy = rootcache.remove_all(app.store)
        if not app.quiet:
            click.echo(f"removed {len(removed)} kept bootstrap roots")
        for place in busy:
            warn(f"kept root {place.name} is in use by a build; left")


# --- running ----------------------------------------------------------------------------------

_COMMAND_SETTINGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


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
        click.option("-v", "--volume", "volumes", multiple=True, metavar="SRC:DST[:ro]",
                     help="Bind-mount a host path (read-only with :ro)."),
        click.option("--hostname", metavar="NAME", help="Host name inside."),
        click.option("--network", type=click.Choice(["host", "none"]),
                     help="host: the host's network (default); none: only loopback."),
    ]):
        fn = option(fn)
    return fn


@cli.command(context_settings=_COMMAND_SETTINGS)
@click.option("-i", "--interactive", is_flag=True,
              help="Accepted for docker compatibility: stdin always passes through.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (a pty inside the sandbox).")
@click.option("--name", metavar="NAME", help="Keep the sandbox under this name instead of discarding it.")
@click.option("--rm", "remove", is_flag=True, help="Accepted for docker compatibility: run is ephemeral by default.")
@click.option("--isolation", type=click.Choice(["pivot_root", "chroot"]), default="pivot_root",
              show_default=True, help="How the root is switched (chroot also drops CAP_SYS_CHROOT).")
@_sandbox_options
@_run_options
@click.argument("profile")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run(app: App, /, interactive: bool, tty: bool, name: str | None, remove: bool, profile: str,
        command: tuple[str, ...], **flags: Any) -> int:
    """Run COMMAND in a new sandbox over PROFILE's image (built first if needed).

    The sandbox is discarded when the command exits, unless --name keeps it.
    Without a COMMAND, the image's shell starts. Put `--` before a command
    whose options could be taken for sandboxmgr's.
    """
    from sandboxmgr import config, sandbox

    _require_root(app, "run")
    options = config.parse_options(command, tty, **flags)
    if name is not None and remove:
        raise SandboxError("--rm and --name contradict each other",
                           hint="drop --name for a throw-away sandbox, or --rm to keep it")
    if name is None:
        return _run_ephemeral(app, profile, options)
    from sandboxmgr.names import check_name
    from sandboxmgr.resolve import create_sandbox

    check_name(name, "sandbox name")
    loaded = app.registry.load(profile)
    record = create_sandbox(app.store, name, app.image_for(loaded), loaded, options)
    # Everything else of the command line is saved with the sandbox (its isolation too).
    return sandbox.run_in(app.store, record, config.options(argv=options.argv, tty=options.tty))


def _run_ephemeral(app: App, ref: str, options: SandboxConfig) -> int:
    """The full CLI's way to the fast path's end: resolve (cached, or load, build, remember), run."""
    from sandboxmgr import sandbox
    from sandboxmgr.locations import profile_dirs
    from sandboxmgr.resolve import resolve_run

    image, saved = resolve_run(app.store, ref, profile_dirs(app.configs), app.image_for)
    return sandbox.run_ephemeral(app.store, image, saved, options)


@cli.command()
@click.argument("profile")
@click.option("--name", metavar="NAME", help="The sandbox's name (default: PROFILE-<random>).")
@_sandbox_options
@_run_options
@pass_app
def create(app: App, /, profile: str, name: str | None, **flags: Any) -> None:
    """Create a persistent sandbox over PROFILE's image; print its name."""
    import secrets

    from sandboxmgr.config import parse_options
    from sandboxmgr.names import check_name
    from sandboxmgr.resolve import create_sandbox

    _require_root(app, "create")
    if name is not None:
        check_name(name, "sandbox name")
    options = parse_options((), False, **flags)
    loaded = app.registry.load(profile)
    name = name or f"{loaded.name}-{secrets.token_hex(3)}"
    if (app.store.sandboxes_dir / name).exists():
        raise SandboxError(f"a sandbox named {name!r} already exists",
                           hint=f"pick another --name, or remove it: sandboxmgr rm {name}")
    record = create_sandbox(app.store, name, app.image_for(loaded), loaded, options)
    click.echo(record.name)


@cli.command(name="exec", context_settings=_COMMAND_SETTINGS)
@click.option("-i", "--interactive", is_flag=True, help="Accepted for docker compatibility.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@_run_options
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def exec_(app: App, /, interactive: bool, tty: bool, name: str, command: tuple[str, ...], **flags: Any) -> int:
    """Run COMMAND in the named sandbox NAME; its changes stay there."""
    from sandboxmgr import config, sandbox

    _require_root(app, "exec")
    options = config.parse_options(command, tty, **flags)
    return sandbox.run_in(app.store, app.store.sandbox(name), options)


@cli.command()
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Log in as this user.")
@click.argument("name")
@pass_app
def shell(app: App, user: str | None, name: str) -> int:
    """Start an interactive shell in the named sandbox NAME."""
    from sandboxmgr import config, sandbox

    _require_root(app, "shell")
    options = config.parse_options((), sys.stdin.isatty(), user=user)
    return sandbox.run_in(app.store, app.store.sandbox(name), options)


# --- sandboxes --------------------------------------------------------------------------------


@cli.command(name="ls")
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


@cli.command()
# Output is JSON either way: --json is accepted (scripts and the README of old pass it), not offered.
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Accepted; the output is JSON either way.")
@click.argument("name")
@pass_app
def inspect(app: App, as_json: bool, name: str) -> None:
    """Show a sandbox's (or else an image's) metadata as JSON."""
    from sandboxmgr.catalog import lookup, sandbox_info
    from sandboxmgr.errors import NotFoundError

    try:
        print_json(sandbox_info(app.store, name))
        return
    except NotFoundError as missing:
        found = lookup(app.store, app.registry, name)
        if not found:
            raise missing from None
    print_json([{**r.meta, "path": str(r.path)} for r in found])


@cli.command()
@click.argument("names", nargs=-1, required=True)
@pass_app
def rm(app: App, names: tuple[str, ...]) -> None:
    """Remove named sandboxes and their changes (never what is mounted into them)."""
    _require_root(app, "rm")
    for name in names:
        app.store.remove_sandbox(app.store.sandbox(name))
        if not app.quiet:
            click.echo(f"removed {name}")


@cli.command()
@click.option("--fix", is_flag=True, help="Clean up what is found (never deleting through a mount).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def doctor(app: App, fix: bool, as_json: bool) -> int:
    """Find what a crash left: mounts, temporary directories, locks, cgroups, processes.

    Exits 0 when nothing is left (or --fix cleaned it all), 1 when something is.
    Cgroups and processes are checked machine-wide, the rest in the store.
    """
    from sandboxmgr import doctor as doctor_

    findings = doctor_.examine(app.store)
    if fix:
        doctor_.repair(app.store, findings)
    left = [f for f in findings if not f.fixed]
    if as_json:
        print_json([f.to_json() for f in findings])
        return 1 if left else 0
    ui.findings_table(findings, app.store.root)
    if left and not fix:
        click.echo(f"hint: 'sandboxmgr doctor --fix' cleans up these {len(left)} leftovers "
                   "(it unmounts, never deletes through a mount)", err=True)
    return 1 if left else 0


# --- matrix -----------------------------------------------------------------------------------


@cli.command(context_settings=_COMMAND_SETTINGS)
@click.option("-p", "--profile", "patterns", multiple=True, metavar="PROFILE",
              help="A profile, alias, path or glob (ubuntu-*); repeatable. Default: the project file's list.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="CPUs",
              help="How many profiles run at once.")
@click.option("-C", "--project", "project_dir", type=click.Path(file_okay=False, exists=True), default=".",
              help="The project directory (with its sandboxmgr.yaml); shown at /src, copy-on-write.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failure; the rest are cancelled.")
@click.option("--keep-failed", is_flag=True, help="Keep each failed profile's sandbox to step into it.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.option("--trust", "trust_files", is_flag=True,
              help="Trust the project's files for this run: let them set host mounts, bootstrap arguments, "
                   "keys and local repositories (see 'sandboxmgr trust').")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def matrix(app: App, patterns: tuple[str, ...], jobs: int, project_dir: str, fail_fast: bool, keep_failed: bool,
           junit_path: str | None, as_json: bool, trust_files: bool, command: tuple[str, ...]) -> int:
    """Run COMMAND (or the project file's) for a project in a fresh sandbox of each profile.

    Exit status 0 only if it passed in every profile, 1 if it failed in any.
    """
    import time

    from sandboxmgr import matrix as matrix_

    _require_root(app, "matrix")
    if command[:1] == ("--",):
        command = command[1:]
    project, selected, command = matrix_.prepare(app.store, app.registry, Path(project_dir).resolve(), patterns,
                                                 command, trust_files)
    matrix_.build_images(selected, app.image_for)
    logs = app.store.logs_dir / "matrix" / f"{project.slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = matrix_.run(app.store, project, selected, command, jobs, fail_fast, keep_failed, logs,
                          MatrixView(app.quiet))
    if junit_path:
        Path(junit_path).write_text(matrix_.junit(results, project, command))
    if as_json:
        click.echo(matrix_.as_json(results))
    else:
        ui.results_table(results)
    if any(r.status == "cancelled" for r in results) and not fail_fast:
        return 130
    return 0 if all(r.status == "passed" for r in results) else 1


@cli.command(name="trust")
@click.argument("project_dir", type=click.Path(file_okay=False, exists=True), default=".", required=False)
@click.option("--revoke", is_flag=True, help="No longer trust the project's files.")
@pass_app
def trust_(app: App, project_dir: str, revoke: bool) -> None:
    """Trust PROJECT_DIR's sandboxmgr.yaml (and the profile files it names) as they are now.

    A trusted project file may set what makes the host read, run or trust something it
    chose: host mounts, bootstrap.extra_args and keyring, file:// mirrors and repositories,
    repository keys, gpgcheck: false. The sha256 of each file is recorded in the store;
    any edit to a file revokes its trust.
    """
    from sandboxmgr import matrix as matrix_
    from sandboxmgr import trust

    _require_root(app, "trust")
    project = matrix_.load_project(Path(project_dir).resolve(), app.registry)
    if project.path is None:
        raise SandboxError(f"no {matrix_.PROJECT_FILE} in {project.root}", hint="give the project's directory")
    listed = [name for name in matrix_.expand(project.profiles, project, app.registry) if name not in project.inline]
    others = [entry.profile for entry in matrix_.entries(listed, project, app.registry)]
    found, digests = trust.findings(project.raw, project.inline, others, app.registry)
    trust.record(app.store, digests, revoke=revoke)
    if app.quiet:
        return
    for path, sha256 in digests.items():
        click.echo(f"{'no longer trusted' if revoke else 'trusted'}: {path} (sha256 {sha256[:16]})")
    if not revoke:
        for finding in found:
            click.echo(f"  may now set {finding.key} ({finding.path.name}:{finding.line})")
        click.echo("an edit to any of these files revokes its trust")


# --- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The full CLI (fastrun.main hands it what the fast path does not take)."""
    from sandboxmgr import entry

    args = list(argv) if argv is not None else sys.argv[1:]
    entry.start()
    status = entry.guarded(lambda: _click_main(args), args)
    sys.exit(status if isinstance(status, int) else 0)


def _click_main(args: list[str]) -> Any:
    """The command, with click's own ways out turned into ours; the rest is entry.guarded's."""
    from sandboxmgr.entry import error

    try:
        return cli.main(args=args, prog_name="sandboxmgr", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns Ctrl-C into Abort; whatever was half-made is already removed.
        click.echo("\nsandboxmgr: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        hint = "see 'sandboxmgr --help'"
        if exc.ctx is not None:
            hint = f"see '{exc.ctx.command_path} --help'"
        error(exc.format_message(), hint)
        sys.exit(EXIT_MANAGER)
    except click.ClickException as exc:
        error(exc.format_message(), None)
        sys.exit(EXIT_MANAGER)
