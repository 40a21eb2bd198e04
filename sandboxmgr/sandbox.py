"""Sandboxes: an overlay over an image, ephemeral (``run``) or named (``create``).

A named sandbox keeps its upper layer and a snapshot of its runtime settings
(hostname, env, mounts, network, user, workdir) taken when it was created, as a
Docker container keeps its config: editing the profile later changes new
sandboxes, not this one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sandboxmgr.enter import (
    CAPABILITY_NUMBERS,
    DEFAULT_PATH,
    DEFAULT_SECCOMP,
    NO_ENV,
    EnterSpec,
    OverlayRoot,
    enter,
)
from sandboxmgr.errors import NotFoundError, SandboxError
from sandboxmgr.locks import Lock
from sandboxmgr.mounts import BindMount
from sandboxmgr.names import HOSTNAME_RE, hostname_for
from sandboxmgr.record import record
from sandboxmgr.store import ImageRecord, SandboxRecord, Store, now_iso

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from typing import Any

    from sandboxmgr.limits import Limits
    from sandboxmgr.profile import Profile
    from sandboxmgr.seccomp import Policy


@record
class RunOptions:
    """What ``run``/``exec`` take on the command line (Docker's names)."""

    argv: tuple[str, ...] = ()
    tty: bool = False
    env: tuple[str, ...] = ()  # K=V, or K to pass the host's value
    workdir: str | None = None
    hostname: str | None = None
    user: str | None = None
    network: str | None = None
    binds: tuple[BindMount, ...] = ()
    isolation: str = "pivot_root"
    limits: Limits | None = None  # --memory, --pids-limit, --cpus: each replaces the saved one
    no_new_privs: bool | None = None  # --security-opt no-new-privileges[=false]
    seccomp: str | None = None  # --security-opt seccomp=default|unconfined|/path/profile.json


@record
class Settings:
    """The runtime settings of a sandbox, from its profile and the create options."""

    hostname: str
    env: Mapping[str, str] = NO_ENV
    workdir: str | None = None
    user: str | None = None
    network: str = "host"
    binds: tuple[BindMount, ...] = ()
    # The image's shared package caches (apt's archives, dnf's cache), mounted like binds.
    caches: tuple[BindMount, ...] = ()
    limits: Limits | None = None  # None: no limits (and no cgroup, no import of cgroups.py)
    no_new_privs: bool = True
    seccomp: str = "default"  # "default", "unconfined" or the absolute path of a JSON profile

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "env": dict(self.env),
            "workdir": self.workdir,
            "user": self.user,
            "network": self.network,
            "mounts": [{"source": str(b.source), "target": b.target, "readonly": b.readonly,
                        "copy_on_write": b.copy_on_write} for b in self.binds],
            "caches": [{"source": str(b.source), "target": b.target} for b in self.caches],
            "limits": self.limits.to_json() if self.limits is not None else {},
            "no_new_privs": self.no_new_privs,
            "seccomp": self.seccomp,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        return cls(
            hostname=data["hostname"],
            env=dict(data.get("env", {})),
            workdir=data.get("workdir"),
            user=data.get("user"),
            network=data.get("network", "host"),
            binds=tuple(BindMount(Path(m["source"]), m["target"], bool(m["readonly"]),
                                  bool(m.get("copy_on_write", False)))
                        for m in data.get("mounts", [])),
            caches=tuple(BindMount(Path(m["source"]), m["target"]) for m in data.get("caches", [])),
            limits=_limits(data.get("limits")),
            no_new_privs=bool(data.get("no_new_privs", True)),
            seccomp=str(data.get("seccomp", "default")),
        )


def _limits(data: dict[str, Any] | None) -> Limits | None:
    if not data:
        return None
    from sandboxmgr.limits import Limits

    return Limits.from_json(data)


def _merged(saved: Limits | None, override: Limits | None) -> Limits | None:
    """The saved limits with the command line's on top (each one replaces its own kind)."""
    if override is None or override.empty:
        return saved
    return override if saved is None else saved.merged(override)


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    """``-e K=V`` and ``-e K`` (the host's value, skipped when unset), as docker does."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise SandboxError(f"-e {item!r} has no variable name", hint="write -e NAME=value")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def profile_settings(store: Store, profile: Profile, default_hostname: str) -> Settings:
    """A sandbox's settings from its profile alone (what `run` caches and `create` saves)."""
    from sandboxmgr.images import package_caches

    return Settings(
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
    )


def with_options(saved: Settings, options: RunOptions) -> Settings:
    """Settings with the command line's options on top, as docker's flags override an image's config."""
    hostname = options.hostname or saved.hostname
    if not HOSTNAME_RE.match(hostname):
        raise SandboxError(f"{hostname!r} is not a valid host name",
                           hint="use letters, digits and '-', up to 63 characters")
    env = dict(saved.env)
    env.update(parse_env(options.env))
    return Settings(
        hostname=hostname,
        env=env,
        workdir=options.workdir or saved.workdir,
        user=options.user or saved.user,
        network=options.network or saved.network,
        binds=saved.binds + options.binds,
        caches=saved.caches,
        limits=_merged(saved.limits, options.limits),
        no_new_privs=saved.no_new_privs if options.no_new_privs is None else options.no_new_privs,
        seccomp=options.seccomp or saved.seccomp,
    )


def _volumes(binds: tuple[BindMount, ...], scratch: Path, volatile: bool) -> tuple[BindMount, ...]:
    """Give each copy-on-write mount its upper and work dirs under ``scratch``."""
    result = []
    for index, bind in enumerate(binds):
        if not bind.copy_on_write:
            result.append(bind)
            continue
        place = scratch / f"volume-{index}"
        for sub in ("upper", "work"):
            (place / sub).mkdir(parents=True, exist_ok=True)
        result.append(bind.with_scratch(place, volatile))
    return tuple(result)


def cache_views(caches: tuple[BindMount, ...], scratch: Path, volatile: bool = False) -> tuple[BindMount, ...]:
    """The shared package caches, copy-on-write: what a sandbox or a build step downloads or
    changes there lands in ``scratch`` and dies with it; the cache itself is only ever written
    by builds, with verified packages (builders/debcache.py)."""
    views = []
    for index, cache in enumerate(caches):
        place = scratch / f"cache-{index}"
        for sub in ("upper", "work"):
            (place / sub).mkdir(parents=True, exist_ok=True)
        views.append(BindMount(cache.source, cache.target, copy_on_write=True, scratch=place, volatile=volatile))
    return tuple(views)


def _seccomp(setting: str, isolation: str) -> Policy | None:
    """The filter a ``seccomp`` setting names: ours, none, or a Docker-format profile."""
    if setting == "default":
        return DEFAULT_SECCOMP
    if setting == "unconfined":
        return None
    from sandboxmgr.seccomp import load_profile

    capabilities = frozenset(CAPABILITY_NUMBERS) - ({"SYS_CHROOT"} if isolation == "chroot" else set())
    return load_profile(setting, capabilities)


def _spec(store: Store, root: OverlayRoot, settings: Settings, options: RunOptions, scratch: Path) -> EnterSpec:
    env = {"PATH": DEFAULT_PATH, "container": "sandboxmgr", "HOSTNAME": settings.hostname}
    env.update(settings.env)
    return EnterSpec(
        root=root,
        argv=options.argv,
        env=env,
        workdir=settings.workdir,
        hostname=settings.hostname,
        user=settings.user,
        network=settings.network,
        binds=cache_views(settings.caches, scratch, root.volatile) + _volumes(settings.binds, scratch, root.volatile),
        tty=options.tty,
        isolation=options.isolation,
        limits=settings.limits,
        no_new_privs=settings.no_new_privs,
        seccomp=_seccomp(settings.seccomp, options.isolation),
        # Beside the package caches (distro-release-arch, never without a dash), which sandboxes
        # may write; this one only the manager writes: it is never mounted into a sandbox.
        seccomp_cache=store.cache_dir / "seccomp",
    )


def run_ephemeral(store: Store, image: ImageRecord, saved: Settings, options: RunOptions) -> int:
    """Run in a throw-away sandbox over ``image``; its changes vanish on exit."""
    settings = with_options(saved, options)
    with store.temporary("run") as tmp, _using(store, image):
        for sub in ("upper", "work", "root"):
            (tmp / sub).mkdir()
        root = OverlayRoot(store.lower_dirs(image), tmp / "upper", tmp / "work", tmp / "root", volatile=True)
        return enter(_spec(store, root, settings, options, tmp))


def _using(store: Store, image: ImageRecord) -> Lock:
    """A shared hold on the image while a sandbox runs over it: rmi and prune wait for no one
    but refuse (busy) instead of deleting layers under a running sandbox."""
    lock = store.lock("image", image.key)
    lock.acquire_shared()
    return lock


def create(store: Store, name: str, image: ImageRecord, profile: Profile, options: RunOptions) -> SandboxRecord:
    settings = with_options(profile_settings(store, profile, hostname_for(name)), options)
    meta = {
        "name": name,
        "profile": profile.name,
        "profile_path": str(profile.path),
        "image": image.key,
        "distro": profile.distro,
        "release": profile.release,
        "created": now_iso(),
        "settings": settings.to_json(),
    }
    # Holding the image, so a concurrent rmi either sees this sandbox or is refused.
    with _using(store, image):
        if store.image(image.key) is None:
            raise SandboxError(f"the image {image.key} of {profile.name} was removed meanwhile",
                               hint="run the command again: the image is built anew")
        return store.create_sandbox(name, meta)


def run_in(store: Store, record: SandboxRecord, options: RunOptions) -> int:
    """Run a command in a named sandbox; its changes stay in the sandbox."""
    lock = store.lock("sandbox", record.name)
    lock.acquire(False, f"sandbox {record.name!r} is in use",
                 "one command at a time runs in a named sandbox; wait for the other to finish")
    with lock:
        # Read again under the lock: an rm (or rm and create) may have come in between.
        try:
            record = store.sandbox(record.name)
        except NotFoundError:
            lock.path.unlink(missing_ok=True)  # ours, made by the acquire: the sandbox is gone
            raise
        image = store.image(record.image_key)
        if image is None:
            raise SandboxError(
                f"the image {record.image_key} of sandbox {record.name!r} is gone",
                hint=f"remove the sandbox (sandboxmgr rm {record.name}) and create it again",
            )
        settings = with_options(Settings.from_json(record.meta["settings"]), options)
        with _using(store, image):
            root = OverlayRoot(store.lower_dirs(image), record.upper, record.work, record.root)
            return enter(_spec(store, root, settings, options, record.path / "volumes"))
