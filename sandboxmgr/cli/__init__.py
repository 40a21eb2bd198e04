"""The command line: parse, call the library, print. Errors become exit codes.

Exit codes (as ``docker run``): the command's own status; 125 when sandboxmgr
fails (bad usage, bad profile, failed build, busy, not root); 126 when the
command cannot be run; 127 when it is not found; 128+N when it was killed by
signal N; 130 on Ctrl-C during a build.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from sandboxmgr.cli import farm, images, jobs, lifecycle, locks, sandboxes
from sandboxmgr.cli.app import App
from sandboxmgr.errors import EXIT_MANAGER

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
@click.version_option(None, "-V", "--version", package_name="sandboxmgr")
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


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script of SHELL: verbs, options, and the names of profiles,
    aliases, sandboxes and images. Install: see the README."""
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the three choices are click's own
    click.echo(complete(cli, {}, "sandboxmgr", "_SANDBOXMGR_COMPLETE").source())


for _command in (completion, images.profiles, images.build, images.images, images.rmi, images.prune, sandboxes.run,
                 sandboxes.create, sandboxes.exec_, sandboxes.shell, sandboxes.ls_, sandboxes.inspect, sandboxes.rm,
                 lifecycle.start, lifecycle.stop, lifecycle.restart, lifecycle.kill, lifecycle.logs,
                 lifecycle.wait, lifecycle.ps, lifecycle.top,
                 jobs.doctor, jobs.matrix, jobs.trust_, jobs.package, images.df, locks.lock, locks.recreate,
                 images.export, images.import_, farm.farm):
    cli.add_command(_command)


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
