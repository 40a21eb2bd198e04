"""From a profile reference to what a sandbox runs over and with: its image and its config.

One service for both front doors. ``fastrun`` asks :func:`cached_run` only (a
miss hands the command to the full CLI, which shows the build's progress);
``cli`` asks :func:`resolve_run`, which on a miss loads the profile, builds its
image, computes the config and remembers the answer (runcache.py). A cache hit
imports neither the YAML reader nor the builders: this module imports them
only on a miss.

This is the images layer: the only one that knows both a profile and the
package caches of its image, so "a sandbox's config from its profile" is here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from sandboxmgr import runcache, sandbox
from sandboxmgr.config import SandboxConfig
from sandboxmgr.mounts import BindMount
from sandboxmgr.names import hostname_for
from sandboxmgr.store import ImageRecord, SandboxRecord, Store

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from sandboxmgr.profile import Profile

Build = Callable[["Profile"], ImageRecord]  # a profile's image, built when needed (with progress)


def cached_run(store: Store, ref: str, dirs: Sequence[Path]) -> tuple[ImageRecord, SandboxConfig] | None:
    """The image and config ``ref`` resolved to last time, if nothing it depends on changed
    and the image is whole; None otherwise (no YAML is read either way)."""
    cached = runcache.lookup(store.root, ref, dirs)
    if cached is None:
        return None
    image = store.image(str(cached["image"]))
    if image is None or any(store.layer(key) is None for key in image.layers):
        return None
    return image, SandboxConfig.from_json(cached["settings"])


def resolve_run(store: Store, ref: str, dirs: Sequence[Path], build: Build) -> tuple[ImageRecord, SandboxConfig]:
    """The image and config of ``ref`` (a profile's name, alias or path) for `run`: the
    cached answer, or else the profile loaded, its image built and the answer remembered."""
    found = cached_run(store, ref, dirs)
    if found is not None:
        return found
    from sandboxmgr.errors import SandboxError
    from sandboxmgr.profile import ProfileRegistry

    registry = ProfileRegistry(dirs)
    try:
        loaded = registry.load(ref)
    except SandboxError:
        image = imported(store, ref, {*registry.files(), *registry.aliases()})
        if image is None:
            raise
        return image, imported_config(image)  # not cached: a profile of that name, made later, wins
    watched = runcache.fingerprints(ref, dirs, loaded.input_files())  # before the build: see there
    image = build(loaded)
    config = profile_config(store, loaded, hostname_for(loaded.name))
    runcache.save(store.root, ref, dirs, watched, image.key, loaded.name, config.to_json())
    return image, config


def profile_config(store: Store, profile: Profile, default_hostname: str) -> SandboxConfig:
    """A sandbox's config from its profile alone (what `run` caches and `create` saves)."""
    from sandboxmgr.images import package_caches

    return SandboxConfig(
        hostname=profile.hostname or default_hostname,
        env=dict(profile.env),
        workdir=profile.workdir,
        user=profile.user,
        network=profile.network,
        binds=tuple(BindMount(Path(m.source), m.target, m.readonly) for m in profile.mounts),
        caches=package_caches(store, profile),
        limits=None if profile.limits.empty else profile.limits,
        no_new_privs=profile.no_new_privs,
        seccomp=profile.seccomp,
        userns=profile.userns,
    )


def imported(store: Store, ref: str, profiles: Collection[str]) -> ImageRecord | None:
    """The newest image imported as ``ref`` (sandboxmgr import SOURCE --as REF), if any, and
    unless a profile file or alias has that name (``profiles``: a broken one says its own error,
    an alias made later included)."""
    if ref in profiles:
        return None
    found = [image for image in store.images() if image.profile == ref and image.meta.get("method") == "import"]
    return max(found, key=lambda image: image.built_ns) if found else None


def imported_config(image: ImageRecord) -> SandboxConfig:
    """An imported image's sandbox config: the defaults, with its OCI config's Env, WorkingDir
    and User (checked at the import: ociimport.oci_settings); no package caches."""
    settings = (image.meta.get("inputs") or {}).get("config") or {}
    env = dict(item.split("=", 1) for item in settings.get("Env", []))
    return SandboxConfig(hostname=hostname_for(image.profile), env=env, workdir=settings.get("WorkingDir"),
                         user=settings.get("User"))


def create_imported(store: Store, name: str, image: ImageRecord, options: SandboxConfig) -> SandboxRecord:
    """A named sandbox over an imported image (no profile: :func:`imported_config`)."""
    config = imported_config(image).merged(options)
    return sandbox.create(store, name, image, None, config)


def create_sandbox(store: Store, name: str, image: ImageRecord, profile: Profile,
                   options: SandboxConfig) -> SandboxRecord:
    """A named sandbox over ``image``: its profile's config with ``options`` on top, saved whole."""
    config = profile_config(store, profile, hostname_for(name)).merged(options)
    return sandbox.create(store, name, image, profile, config)
