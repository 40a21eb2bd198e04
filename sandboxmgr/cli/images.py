"""Verbs of profiles and images: profiles, build, images, rmi, prune, df, export, import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sandboxmgr import ui
from sandboxmgr.cli.app import App, complete_images, complete_profiles, pass_app, require_root
from sandboxmgr.errors import SandboxError, counted
from sandboxmgr.limits import format_bytes
from sandboxmgr.ui import print_json

if TYPE_CHECKING:
    pass


# --- profiles and images ---------------------------------------------------------------------


@click.command()
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


@click.command()
@click.argument("profile", shell_complete=complete_profiles)
@click.option("--rebuild", is_flag=True, help="Build every layer again even if the image exists.")
@click.option("--no-cache", "no_cache", is_flag=True,
              help="Like --rebuild, and bootstrap afresh even if a kept root matches the mirror's index.")
@pass_app
def build(app: App, profile: str, rebuild: bool, no_cache: bool) -> None:
    """Build the image of PROFILE (run and create do it when needed)."""
    from sandboxmgr.images import ensure_image

    require_root(app, "build")
    loaded = app.registry.load(profile)
    line = app.progress(loaded.name)
    try:
        record = ensure_image(app.store, loaded, line, rebuild=rebuild or no_cache, use_kept_roots=not no_cache)
    finally:
        line.done()
    if not app.quiet:
        click.echo(f"{loaded.name}: image {record.key} ({format_bytes(record.meta.get('size'), decimal=True)})")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--layers", "show_layers", is_flag=True, help="Also list each image's layers.")
@pass_app
def images(app: App, as_json: bool, show_layers: bool) -> None:
    """List built images, and the layers they are made of."""
    from sandboxmgr.catalog import listing

    rows = listing(app.store, app.registry)
    if as_json:
        print_json(rows)
        return
    ui.images_table(rows, show_layers)


@click.command()
@click.argument("refs", nargs=-1, required=True, shell_complete=complete_images)
@pass_app
def rmi(app: App, refs: tuple[str, ...]) -> None:
    """Remove the images of profiles (or image keys), and the layers no other image uses."""
    from sandboxmgr import rootcache
    from sandboxmgr.catalog import lookup

    require_root(app, "rmi")
    for ref in refs:
        found = lookup(app.store, app.registry, ref)
        if not found:
            raise SandboxError(f"no image of {ref!r} in the store", hint="see 'sandboxmgr images'")
        for record in found:
            layers = app.store.remove_image(record)
            if not app.quiet:
                click.echo(f"removed image {record.key} ({record.profile})"
                           + (f" and {counted(len(layers), 'unused layer')}" if layers else ""))
                if record.layers and record.layers[0] in layers and rootcache.is_kept(app.store, record.layers[0]):
                    click.echo(f"kept: its bootstrap root, for the next build of {record.profile} "
                               "('sandboxmgr prune --cache' removes it)")


@click.command()
@click.option("--cache", is_flag=True,
              help="Also remove the kept bootstrap roots and the run caches, and empty the package caches "
                   "(a cache a build or a running sandbox uses is left).")
@pass_app
def prune(app: App, cache: bool) -> None:
    """Remove images other than their profile's current one that no sandbox uses, and every
    layer no image uses."""
    from sandboxmgr.catalog import prune as prune_

    require_root(app, "prune")
    images_removed, layers_removed = prune_(app.store, app.registry)
    if not app.quiet:
        images_, layers_ = counted(len(images_removed), "older image"), counted(len(layers_removed), "unused layer")
        click.echo(f"removed {images_} and {layers_}")
    if cache:
        _prune_caches(app)


def _prune_caches(app: App) -> None:
    from sandboxmgr import pkgcache, rootcache
    from sandboxmgr.errors import warn

    app.store.ensure()  # locks/ too: a store restored without it
    removed, busy = rootcache.remove_all(app.store)
    emptied, busy_caches = pkgcache.empty_all(app.store)
    run_files, run_freed = pkgcache.empty_run_caches(app.store)
    if not app.quiet:
        click.echo(f"removed {counted(len(removed), 'kept bootstrap root')}")
        freed = format_bytes(sum(size for _cache, size in emptied), decimal=True)
        click.echo(f"emptied {counted(len(emptied), 'package cache')} ({freed})")
        click.echo(f"removed {counted(run_files, 'run cache file')} ({format_bytes(run_freed, decimal=True)}: "
                   "seccomp filters, resolved profiles)")
    for place in busy:
        warn(f"kept root {place.name} is in use by a build; left")
    for place in busy_caches:
        warn(f"package cache {place.name} is in use by a build or a running sandbox; left "
             "(run 'sandboxmgr prune --cache' again when it ends)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-v", "--verbose", is_flag=True, help="Also list each image, layer, sandbox, cache and kept root.")
@pass_app
def df(app: App, as_json: bool, verbose: bool) -> None:
    """Show what the store takes on disk, and what prune and prune --cache would free."""
    from sandboxmgr.df import report

    app.store.require_access(app.store.root)
    found = report(app.store, app.registry, verbose)
    if as_json:
        print_json(found)
        return
    ui.df_table(found, verbose)


# --- OCI export and import --------------------------------------------------------------------


@click.command(name="export")
@click.argument("ref", metavar="IMAGE", shell_complete=complete_images)
@click.option("-o", "--output", "dest", required=True, type=click.Path(path_type=Path),
              help="Where to write it (must not exist).")
@click.option("--format", "fmt", type=click.Choice(["oci-dir", "oci-archive"]), default="oci-dir", show_default=True,
              help="An OCI image layout directory, or the same as one tar file.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_app
def export(app: App, ref: str, dest: Path, fmt: str, as_json: bool) -> None:
    """Write the image of IMAGE (a profile, an imported name, or an image key) as an OCI image:
    one layer per layer of the image, for skopeo, podman, buildah and umoci."""
    from sandboxmgr.catalog import current, lookup
    from sandboxmgr.ociexport import export as write

    require_root(app, "export")
    found = lookup(app.store, app.registry, ref)
    if not found:
        raise SandboxError(f"no image of {ref!r} in the store", hint="build it first, or see 'sandboxmgr images'")
    keys = set(current(found, app.registry).values())
    image = next(record for record in found if record.key in keys)
    line = app.progress(f"export {image.profile}")
    try:
        written = write(app.store, image, dest, fmt, line)
    finally:
        line.done()
    if as_json:
        print_json([written])
    elif not app.quiet:
        click.echo(f"{image.profile}: image {image.key} written to {written['path']} ({fmt}, "
                   f"{counted(written['layers'], 'layer')}, manifest {written['manifest']})")


@click.command(name="import")
@click.argument("source")
@click.option("--as", "name", required=True, metavar="NAME", help="The name `run`, `create` and `rmi` take.")
@click.option("--platform", "platform_", metavar="[linux/]ARCH[/VARIANT]",
              help="Of a multi-platform image, the one to import (default: this machine's); another "
                   "architecture's runs through qemu-user (README: Foreign architectures).")
@click.option("--json", "as_json", is_flag=True, help="Print the image's record as JSON.")
@pass_app
def import_(app: App, source: str, name: str, platform_: str | None, as_json: bool) -> None:
    """Import an OCI image as the image NAME: SOURCE is an OCI layout directory, an oci-archive,
    or anything skopeo copies from (docker-archive:FILE, docker://REF)."""
    from sandboxmgr.ociimport import check_image_name, import_image, parse_platform

    wanted = parse_platform(platform_)
    check_image_name(name, {*app.registry.files(), *app.registry.aliases()})
    require_root(app, "import")
    line = app.progress(f"import {name}")
    try:
        record, new = import_image(app.store, source, name, line, wanted)
    finally:
        line.done()
    if as_json:
        print_json([{"key": record.key, "name": name, "new": new, "layers": record.layers,
                    "size": record.meta.get("size"), "source": source, "arch": record.meta.get("arch"),
                    "manifest": record.meta["inputs"]["manifest"], "path": str(record.path)}])
    elif not app.quiet:
        click.echo(f"{name}: image {record.key} ({counted(len(record.layers), 'layer')}, "
                   f"{format_bytes(record.meta.get('size'), decimal=True)})" + ("" if new else ", imported before"))
