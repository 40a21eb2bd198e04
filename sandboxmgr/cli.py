"""The command line: parse, call the library, print. Errors become exit codes.

Exit codes (as ``docker run``): the command's own status; 125 when sandboxmgr
fails (bad usage, bad profile, failed build, busy, not root); 126 when the
command cannot be run; 127 when it is not found; 128+N when it was killed by
signal N; 130 on Ctrl-C during a build.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sandboxmgr.errors import EXIT_MANAGER, SandboxError, no_space

if TYPE_CHECKING:
    from sandboxmgr.profile import Profile, ProfileRegistry
    from sandboxmgr.sandbox import RunOptions
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
_COUNTED = re.compile(r"\(\d+\)$")


class ProgressLine:
    """One updating status line on a terminal; phase changes only otherwise."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_phase = ""
        self.shown = False

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty:
            width = os.get_terminal_size(sys.stderr.fileno()).columns - 1
            sys.stderr.write(f"\r\x1b[K[{self.label}] {message}"[: width + 4])
            sys.stderr.flush()
            self.shown = True
            return
        # Off a terminal, per-package lines ("... (12)") would be a wall of log.
        if _COUNTED.search(message) or message == self.last_phase:
            return
        self.last_phase = message
        print(f"[{self.label}] {message}", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


# --- output helpers ---------------------------------------------------------------------------


def human_size(size: int | float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}TB"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


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
    from sandboxmgr.identity import image_key
    from sandboxmgr.profile import Profile

    # Profiles need no store: a user other than root lists them too, with BUILT unknown.
    try:
        app.store.require_access(app.store.images_dir)
        readable = True
    except SandboxError:
        readable = False
    rows: list[dict[str, Any]] = []
    for name, item in app.registry.load_all():
        if isinstance(item, Profile):
            key = image_key(item)
            built = app.store.image(key) is not None if readable else None
            rows.append({"name": name, "distro": item.distro, "release": item.release,
                         "arch": item.arch, "aliases": list(item.aliases), "built": built,
                         "key": key, "description": item.description,
                         "path": str(item.path), "error": None})
        else:
            rows.append({"name": name, "distro": "?", "release": "?", "arch": "?", "aliases": [],
                         "built": False, "key": None, "description": "",
                         "path": str(app.registry.files()[name]), "error": item.message})
    if not readable:
        click.echo(f"note: BUILT is unknown ('?'): the store {app.store.root} is root's alone; "
                   "run as root to see it", err=True)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["PROFILE", "DISTRO", "RELEASE", "ARCH", "BUILT", "ALIASES", "DESCRIPTION"],
        [[r["name"], r["distro"], r["release"], r["arch"], "?" if r["built"] is None else "yes" if r["built"] else "no",
          ",".join(r["aliases"]), r["description"] if not r["error"] else f"INVALID: {r['error'].splitlines()[0]}"]
         for r in rows],
    )


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
        click.echo(f"{loaded.name}: image {record.key} ({human_size(record.meta.get('size'))})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--layers", "show_layers", is_flag=True, help="Also list each image's layers.")
@pass_app
def images(app: App, as_json: bool, show_layers: bool) -> None:
    """List built images, and the layers they are made of."""
    store = app.store
    records = store.images()
    newest: dict[str, int] = {}
    for record in records:
        newest[record.profile] = max(record.built_ns, newest.get(record.profile, 0))
    users: dict[str, set[str]] = {}
    for record in records:
        for key in record.layers:
            users.setdefault(key, set()).add(record.profile)
    rows = []
    for record in records:
        meta = dict(record.meta)
        meta.pop("inputs", None)
        meta["path"] = str(record.path)
        meta["outdated"] = record.built_ns != newest[record.profile]
        layers = []
        for key in record.layers:
            layer = store.layer(key)
            layers.append({
                "key": key,
                "kind": layer.meta.get("kind") if layer else None,
                "label": layer.meta.get("label") if layer else None,
                "size": layer.meta.get("size") if layer else None,
                "path": str(layer.path) if layer else None,
                "shared_with": sorted(users[key] - {record.profile}),
                "missing": layer is None,
                # When the kept bootstrap root this layer links was made (rootcache.py), if it does.
                "kept_root": layer.meta.get("kept_root") if layer else None,
            })
        meta["layers"] = layers
        rows.append(meta)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["PROFILE", "DISTRO", "RELEASE", "SIZE", "LAYERS", "BUILT AT", "KEY"],
        [[r["profile"] + (" (older)" if r["outdated"] else ""), r["distro"], r["release"],
          human_size(r.get("size")), str(len(r["layers"])), r.get("built_at", "?"), r["key"]] for r in rows],
    )
    if show_layers:
        for row in rows:
            click.echo(f"\n{row['profile']} ({row['key']}):")
            for layer in row["layers"]:
                shared = f"  shared with {', '.join(layer['shared_with'])}" if layer["shared_with"] else ""
                click.echo(f"  {layer['key']}  {human_size(layer['size']):>8}  {layer['label']}{shared}")


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@pass_app
def rmi(app: App, refs: tuple[str, ...]) -> None:
    """Remove the images of profiles (or image keys), and the layers no other image uses."""
    from sandboxmgr import rootcache
    from sandboxmgr.images import find_images

    _require_root(app, "rmi")
    for ref in refs:
        found = find_images(app.store, ref)
        if not found:
            try:
                found = find_images(app.store, app.registry.load(ref).name)
            except SandboxError:
                found = []
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
    _require_root(app, "prune")
    images_removed, layers_removed = app.store.prune()
    if not app.quiet:
        click.echo(f"removed {len(images_removed)} older images and {len(layers_removed)} unused layers")
    if cache:
        from sandboxmgr import rootcache
        from sandboxmgr.store import warn

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
        # Limits and security options reach _options() through the context, not as
        # parameters of every command that takes them (run, create, exec).
        click.option("--memory", metavar="SIZE", expose_value=False, callback=_remember,
                     help="Memory limit, swap included (512M, 2G); the OOM killer acts inside the sandbox."),
        click.option("--pids-limit", metavar="N", expose_value=False, callback=_remember,
                     help="At most N processes and threads (a fork bomb stops there)."),
        click.option("--cpus", metavar="N", expose_value=False, callback=_remember,
                     help="CPU time, in CPUs (1.5: one and a half CPUs' worth)."),
        click.option("--security-opt", metavar="OPT", multiple=True, expose_value=False, callback=_remember,
                     help="no-new-privileges=false lets setuid binaries work (default: true); "
                          "seccomp=unconfined|FILE.json: no system call filter, or a Docker-format one."),
    ]):
        fn = option(fn)
    return fn


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"sandboxmgr.{param.name}"] = value
    return value


_SECURITY_OPTS_HINT = ("sandboxmgr supports --security-opt no-new-privileges[=true|false] and "
                       "seccomp=default|unconfined|/path/profile.json")


def _security_opts(options: tuple[str, ...]) -> tuple[bool | None, str | None]:
    """``--security-opt no-new-privileges[=true|false]`` and ``seccomp=default|unconfined|FILE``
    (also docker's older ``:`` form): (no_new_privs, seccomp), None where not given."""
    no_new_privs = seccomp = None
    for option in options:
        name, _, value = option.replace(":", "=", 1).partition("=")
        if name == "no-new-privileges" and value.lower() in ("", "true", "false"):
            no_new_privs = value.lower() != "false"
        elif name == "seccomp" and value:
            seccomp = value if value in ("default", "unconfined") else _seccomp_file(option, value)
        else:
            raise SandboxError(f"--security-opt {option}: not supported", hint=_SECURITY_OPTS_HINT)
    return no_new_privs, seccomp


def _seccomp_file(option: str, value: str) -> str:
    """A profile file, checked now (a named sandbox keeps its absolute path)."""
    from sandboxmgr.seccomp import load_profile

    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isfile(path):
        raise SandboxError(f"--security-opt {option}: no such file",
                           hint="give a Docker-format JSON seccomp profile, or seccomp=unconfined")
    load_profile(path)  # a malformed profile is reported here, before anything starts
    return path


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


def _binds(volumes: tuple[str, ...]) -> tuple[Any, ...]:
    from sandboxmgr.mounts import BindMount

    binds = []
    for volume in volumes:
        try:
            binds.append(BindMount.parse(volume))
        except ValueError as exc:
            raise SandboxError(f"-v {exc}", hint="write -v /host/path:/path/inside[:ro]") from None
    return tuple(binds)


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def _options(command: tuple[str, ...], tty: bool, env: tuple[str, ...], workdir: str | None,
             user: str | None, hostname: str | None = None, network: str | None = None,
             volumes: tuple[str, ...] = (), isolation: str = "pivot_root") -> RunOptions:
    from sandboxmgr.sandbox import RunOptions

    if command[:1] == ("--",):
        command = command[1:]
    if workdir is not None and not workdir.startswith("/"):
        raise SandboxError(f"-w {workdir}: the working directory must be an absolute path",
                           hint="write -w /path/inside")
    if tty and not stdin_is_tty():
        raise SandboxError("-t needs a terminal on stdin, and stdin is not one",
                           hint="drop -t when piping input or running from a script")
    from sandboxmgr.limits import Limits

    meta = click.get_current_context().meta
    limits = Limits.parse(meta.get("sandboxmgr.memory"), meta.get("sandboxmgr.pids_limit"),
                          meta.get("sandboxmgr.cpus"))
    no_new_privs, seccomp = _security_opts(meta.get("sandboxmgr.security_opt", ()))
    return RunOptions(argv=command, tty=tty, env=env, workdir=workdir, hostname=hostname,
                      user=user, network=network, binds=_binds(volumes), isolation=isolation,
                      limits=limits, no_new_privs=no_new_privs, seccomp=seccomp)


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
def run(app: App, interactive: bool, tty: bool, name: str | None, remove: bool, isolation: str,
        volumes: tuple[str, ...],
        hostname: str | None, network: str | None, env: tuple[str, ...], workdir: str | None,
        user: str | None, profile: str, command: tuple[str, ...]) -> int:
    """Run COMMAND in a new sandbox over PROFILE's image (built first if needed).

    The sandbox is discarded when the command exits, unless --name keeps it.
    Without a COMMAND, the image's shell starts. Put `--` before a command
    whose options could be taken for sandboxmgr's.
    """
    from sandboxmgr import sandbox

    _require_root(app, "run")
    options = _options(command, tty, env, workdir, user, hostname, network, volumes, isolation)
    if name is not None and remove:
        raise SandboxError("--rm and --name contradict each other",
                           hint="drop --name for a throw-away sandbox, or --rm to keep it")
    if name is None:
        return _run_ephemeral(app, profile, options)
    from sandboxmgr.names import check_name

    check_name(name, "sandbox name")
    loaded = app.registry.load(profile)
    image = app.image_for(loaded)
    record = sandbox.create(app.store, name, image, loaded, options)
    return sandbox.run_in(app.store, record, sandbox.RunOptions(argv=options.argv, tty=options.tty,
                                                                 isolation=isolation))


def _run_ephemeral(app: App, ref: str, options: RunOptions) -> int:
    """The fast path: a cached resolution skips the YAML; otherwise resolve, build, remember."""
    from sandboxmgr import runcache, sandbox
    from sandboxmgr.locations import profile_dirs

    dirs = profile_dirs(app.configs)
    cached = runcache.lookup(app.store.root, ref, dirs)
    if cached is not None:
        image = app.store.image(str(cached["image"]))
        if image is not None and all(app.store.layer(key) is not None for key in image.layers):
            settings = sandbox.Settings.from_json(cached["settings"])
            return sandbox.run_ephemeral(app.store, image, settings, options)
    from sandboxmgr.names import hostname_for

    loaded = app.registry.load(ref)
    watched = runcache.fingerprints(ref, dirs, loaded.input_files())
    image = app.image_for(loaded)
    settings = sandbox.profile_settings(app.store, loaded, hostname_for(loaded.name))
    runcache.save(app.store.root, ref, dirs, watched, image.key, loaded.name, settings.to_json())
    return sandbox.run_ephemeral(app.store, image, settings, options)


@cli.command()
@click.argument("profile")
@click.option("--name", metavar="NAME", help="The sandbox's name (default: PROFILE-<random>).")
@_sandbox_options
@_run_options
@pass_app
def create(app: App, profile: str, name: str | None, volumes: tuple[str, ...], hostname: str | None,
           network: str | None, env: tuple[str, ...], workdir: str | None, user: str | None) -> None:
    """Create a persistent sandbox over PROFILE's image; print its name."""
    import secrets

    from sandboxmgr import sandbox
    from sandboxmgr.names import check_name

    _require_root(app, "create")
    if name is not None:
        check_name(name, "sandbox name")
    options = _options((), False, env, workdir, user, hostname, network, volumes)
    loaded = app.registry.load(profile)
    name = name or f"{loaded.name}-{secrets.token_hex(3)}"
    if (app.store.sandboxes_dir / name).exists():
        raise SandboxError(f"a sandbox named {name!r} already exists",
                           hint=f"pick another --name, or remove it: sandboxmgr rm {name}")
    image = app.image_for(loaded)
    record = sandbox.create(app.store, name, image, loaded, options)
    click.echo(record.name)


@cli.command(name="exec", context_settings=_COMMAND_SETTINGS)
@click.option("-i", "--interactive", is_flag=True, help="Accepted for docker compatibility.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@_run_options
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def exec_(app: App, interactive: bool, tty: bool, env: tuple[str, ...], workdir: str | None,
          user: str | None, name: str, command: tuple[str, ...]) -> int:
    """Run COMMAND in the named sandbox NAME; its changes stay there."""
    from sandboxmgr import sandbox

    _require_root(app, "exec")
    options = _options(command, tty, env, workdir, user)
    return sandbox.run_in(app.store, app.store.sandbox(name), options)


@cli.command()
@click.option("-u", "--user", metavar="USER[:GROUP]", help="Log in as this user.")
@click.argument("name")
@pass_app
def shell(app: App, user: str | None, name: str) -> int:
    """Start an interactive shell in the named sandbox NAME."""
    from sandboxmgr import sandbox

    _require_root(app, "shell")
    options = _options((), sys.stdin.isatty(), (), None, user)
    return sandbox.run_in(app.store, app.store.sandbox(name), options)


# --- sandboxes --------------------------------------------------------------------------------


def _sandbox_info(app: App, name: str) -> dict[str, Any]:
    from sandboxmgr.store import is_locked, tree_size

    record = app.store.sandbox(name)
    info = dict(record.meta)
    info["path"] = str(record.path)
    info["changes_size"] = tree_size(record.upper)
    info["in_use"] = is_locked(app.store.locks_dir / f"sandbox-{name}.lock")
    info["image_present"] = app.store.image(record.image_key) is not None
    return info


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def ls_(app: App, as_json: bool) -> None:
    """List named sandboxes."""
    rows = [_sandbox_info(app, record.name) for record in app.store.sandboxes()]
    if as_json:
        print_json(rows)
        return
    print_table(
        ["NAME", "PROFILE", "IMAGE", "CREATED", "CHANGES", "STATE"],
        [[r["name"], r["profile"], r["image"], r["created"], human_size(r["changes_size"]),
          "running" if r["in_use"] else "idle"] for r in rows],
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the default output is JSON too).")
@click.argument("name")
@pass_app
def inspect(app: App, as_json: bool, name: str) -> None:
    """Show a sandbox's (or else an image's) metadata as JSON."""
    from sandboxmgr.errors import NotFoundError
    from sandboxmgr.images import find_images

    try:
        print_json(_sandbox_info(app, name))
        return
    except NotFoundError as missing:
        found = find_images(app.store, name)
        if not found:
            try:
                found = find_images(app.store, app.registry.load(name).name)
            except SandboxError:
                raise missing from None
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
    if not findings:
        click.echo(f"nothing left over: no stray mounts, temporary directories, locks, cgroups "
                   f"or processes, and the store is private ({app.store.root})")
        return 0
    print_table(["KIND", "WHAT", "DETAIL"],
                [[f.kind, f.what, f.detail + (" - fixed" if f.fixed else f" - NOT fixed: {f.error}"
                                              if f.error else "")] for f in findings])
    if left and not fix:
        click.echo(f"hint: 'sandboxmgr doctor --fix' cleans up these {len(left)} leftovers "
                   "(it unmounts, never deletes through a mount)", err=True)
    return 1 if left else 0


# --- matrix -----------------------------------------------------------------------------------


class MatrixView:
    """One line per profile with its state and elapsed time on a terminal; a plain,
    prefixed line per state change otherwise."""

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
                    extra = f" in {r.duration:.1f}s (exit {r.exit_code})" if r.duration is not None else ""
                    click.echo(f"[{r.name}] {r.status}{extra}", err=True)
            return
        lines = []
        for r in results:
            elapsed = r.duration if r.duration is not None else (now - r.started if r.started else 0.0)
            code = f" exit {r.exit_code}" if r.exit_code is not None else ""
            lines.append(f"  {r.name:<28} {r.status:<10} {elapsed:7.1f}s{code}")
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}F")
        sys.stderr.write("".join(f"\x1b[2K{line}\n" for line in lines))
        sys.stderr.flush()
        self.drawn = len(lines)


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
    from sandboxmgr import trust
    from sandboxmgr.identity import image_key

    _require_root(app, "matrix")
    if command[:1] == ("--",):
        command = command[1:]
    root = Path(project_dir).resolve()
    if not trust_files and not trust.trusted_as_is(app.store, root / matrix_.PROJECT_FILE):
        # Until the trust check below: profile files it names are read only from the project
        # and the profile directories (nothing else of the host is opened for it).
        app.registry.confine = (root, *app.registry.dirs)
    project = matrix_.load_project(root, app.registry)
    if patterns:
        app.registry.confine = None  # named on the command line: the user's own choice
    from_project_file = not patterns
    patterns = patterns or project.profiles
    if not patterns:
        raise SandboxError("no profiles to run", hint="give -p PROFILE, or list 'profiles:' in sandboxmgr.yaml")
    command = command or project.command
    if not command:
        raise SandboxError("no command to run", hint="give one after --, or set 'command:' in sandboxmgr.yaml")
    selected = matrix_.entries(matrix_.expand(patterns, project, app.registry), project, app.registry)
    # Before anything is built: keys that make the host run or trust what the project chose.
    if not trust_files:
        inline = {e.name: e.profile for e in selected if e.name in project.inline}
        others = [e.profile for e in selected if e.name not in project.inline]
        found, digests = trust.findings(project.raw, inline, others, app.registry)
        # What 'sandboxmgr trust DIR' would record (a file named with -p it does not).
        covered = trust.project_files(project.path, project.inline, others if from_project_file else [],
                                      app.registry.dirs)
        trust.check(app.store, found, digests, project.root, set(covered))
    # Every image first, each once, even when two entries share one.
    built: set[str] = set()
    for entry in selected:
        if image_key(entry.profile) not in built:
            app.image_for(entry.profile)
            built.add(image_key(entry.profile))
    logs = app.store.logs_dir / "matrix" / f"{project.slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    results = matrix_.run(app.store, project, selected, command, jobs, fail_fast, keep_failed, logs,
                          MatrixView(app.quiet))
    if junit_path:
        Path(junit_path).write_text(matrix_.junit(results, project, command))
    if as_json:
        click.echo(matrix_.as_json(results))
    else:
        print_table(["PROFILE", "RESULT", "EXIT", "TIME", "LOG"],
                    [[r.name, r.status, "-" if r.exit_code is None else str(r.exit_code),
                      "-" if r.duration is None else f"{r.duration:.1f}s", str(r.log)] for r in results])
        for r in results:
            if r.status == "failed" and r.reason:
                click.echo(f"{r.name}: {r.reason}")
            if r.sandbox:
                click.echo(f"{r.name}: kept as sandbox {r.sandbox}; step into it with: sandboxmgr shell {r.sandbox}")
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


def _raise_exit(signum: int, _frame: object) -> NoReturn:
    # SIGTERM and SIGHUP unwind like Ctrl-C, so builds remove their temporary trees.
    raise SystemExit(128 + signum)


def _error(message: str, hint: str | None) -> None:
    click.echo(f"sandboxmgr: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)


def _store_of(argv: Sequence[str]) -> Path:
    """The store a command line names (--store DIR, SANDBOXMGR_STORE, the default), for
    errors that come after click's context is gone."""
    from sandboxmgr.locations import default_store

    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--store" and index + 1 < len(args):
            return Path(os.path.abspath(args[index + 1]))
        if arg.startswith("--store="):
            return Path(os.path.abspath(arg.split("=", 1)[1]))
    return Path(os.path.abspath(default_store()))


def _os_error(exc: OSError, argv: Sequence[str]) -> tuple[str, str | None]:
    """One line and a hint for what the system refused: a full disk, a permission."""
    import errno

    store = _store_of(argv)
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        full = no_space(store, str(exc.filename) if exc.filename else "")
        if exc.errno == errno.EDQUOT:
            full.message = full.message.replace("no space left on device", "disk quota exceeded")
        return full.message, full.hint
    if exc.errno in (errno.EACCES, errno.EPERM):
        inside = exc.filename is not None and (str(exc.filename) + "/").startswith(str(store) + "/")
        if inside and os.geteuid() != 0:
            return (f"cannot read the store {store}: it is root's alone (it holds setuid binaries "
                    "and device nodes of sandboxes)", "run it as root (sudo sandboxmgr ...)")
        return f"permission denied{where}", "sandboxmgr works as root: run it with sudo, or as root"
    return (f"{exc.strerror or exc}{where}",
            "run again with --debug for the traceback; report it if it is not the system's fault")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    os.umask(0o022)  # see fastrun.main
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        status = cli.main(args=argv, prog_name="sandboxmgr", standalone_mode=False)
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
        _error(exc.format_message(), hint)
        sys.exit(EXIT_MANAGER)
    except click.ClickException as exc:
        _error(exc.format_message(), None)
        sys.exit(EXIT_MANAGER)
    except SandboxError as exc:
        _error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if debug:
            raise
        problem, advice = _os_error(exc, argv if argv is not None else sys.argv[1:])
        _error(problem, advice)
        sys.exit(EXIT_MANAGER)
    except Exception as exc:
        if debug:
            raise
        _error(f"internal error: {type(exc).__name__}: {exc}",
               "run again with --debug for the traceback, and report it")
        sys.exit(EXIT_MANAGER)
    sys.exit(status if isinstance(status, int) else 0)
