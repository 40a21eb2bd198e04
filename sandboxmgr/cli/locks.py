"""Verbs of lock files and bug reports: lock, recreate."""

from __future__ import annotations

from pathlib import Path

import click

from sandboxmgr.cli.app import App, complete_profiles, pass_app, require_root
from sandboxmgr.errors import counted, shown
from sandboxmgr.ui import print_json


@click.command()
@click.argument("profile", shell_complete=complete_profiles)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the lock file here (default: print it).")
@click.option("--json", "as_json", is_flag=True, help="Print the lock as JSON.")
@pass_app
def lock(app: App, profile: str, output: Path | None, as_json: bool) -> None:
    """Write the lock file of PROFILE's image (built first if needed): every installed
    package with its exact version and architecture."""
    from sandboxmgr import lockfile
    from sandboxmgr.locking import take, write_file

    loaded = app.registry.load(profile)
    taken = take(app.store, loaded, app.image_for(loaded))
    if as_json:
        print_json(taken.as_dict())
    if output is None:
        if not as_json:
            click.echo(lockfile.dump(taken), nl=False)
        return
    write_file(output, lockfile.dump(taken))  # never through a symlink planted at a temporary name
    if not app.quiet and not as_json:
        click.echo(f"{loaded.name}: locked {counted(len(taken.packages), 'package')} of image {taken.image} "
                   f"in {shown(output)}", err=True)


@click.command()
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-p", "--profile", "base", required=True, shell_complete=complete_profiles,
              help="The profile the report's system resembles (distro and release).")
@click.option("--as", "name", help="The new profile's name (default: PROFILE-report).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the new profile (default: ./NAME.yaml).")
@pass_app
def recreate(app: App, report: Path, base: str, name: str | None, output: Path | None) -> None:
    """Build an image with the package versions a bug report names (reportbug's text,
    'dpkg -l' or 'dpkg-query -W' output; 'rpm -qa' or 'dnf list installed' output for an
    RPM-family PROFILE) pinned, over PROFILE."""
    from sandboxmgr.locking import lacks
    from sandboxmgr.locking import recreate as recreate_

    require_root(app, "recreate")
    done = recreate_(app.registry, report, base, name, output, app.image_for)
    if app.quiet:
        return
    click.echo(f"{done.profile.name}: image {done.record.key}, {counted(len(done.pinned), 'version')} pinned "
               f"(profile {shown(done.path)})")
    if done.lacking:
        click.echo(f"the {lacks(done.profile.family)} {counted(len(done.lacking), 'named version')}: "
                   f"{', '.join(done.lacking)}")
    if done.foreign:
        click.echo(f"not pinned (another architecture): {', '.join(done.foreign)}")
