"""Sandboxes: an overlay over an image, ephemeral (``run``) or named (``create``).

A named sandbox keeps its upper layer and a snapshot of its runtime settings
(hostname, env, mounts, network, user, workdir) taken when it was created, as a
Docker container keeps its config: editing the profile later changes new
sandboxes, not this one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxmgr.enter import DEFAULT_PATH, EnterSpec, OverlayRoot, enter
from sandboxmgr.errors import SandboxError
from sandboxmgr.mounts import BindMount
from sandboxmgr.profile import HOSTNAME_RE, Profile
from sandboxmgr.store import ImageRecord, SandboxRecord, Store, now_iso


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Settings:
    """The runtime settings of a sandbox, from its profile and the create options."""

    hostname: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    network: str = "host"
    binds: tuple[BindMount, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "env": self.env,
            "workdir": self.workdir,
            "user": self.user,
            "network": self.network,
            "mounts": [{"source": str(b.source), "target": b.target, "readonly": b.readonly}
                       for b in self.binds],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        return cls(
            hostname=data["hostname"],
            env=dict(data.get("env", {})),
            workdir=data.get("workdir"),
            user=data.get("user"),
            network=data.get("network", "host"),
            binds=tuple(BindMount(Path(m["source"]), m["target"], bool(m["readonly"]))
                        for m in data.get("mounts", [])),
        )


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


def settings_for(profile: Profile, options: RunOptions, default_hostname: str) -> Settings:
    hostname = options.hostname or profile.hostname or default_hostname
    if not HOSTNAME_RE.match(hostname):
        raise SandboxError(f"{hostname!r} is not a valid host name",
                           hint="use letters, digits and '-', up to 63 characters")
    binds = tuple(BindMount(Path(m.source), m.target, m.readonly)
                  for m in profile.mounts) + options.binds
    env = dict(profile.env)
    env.update(parse_env(options.env))
    return Settings(
        hostname=hostname,
        env=env,
        workdir=options.workdir or profile.workdir,
        user=options.user or profile.user,
        network=options.network or profile.network,
        binds=binds,
    )


def _spec(root: OverlayRoot, settings: Settings, options: RunOptions) -> EnterSpec:
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
        binds=settings.binds,
        tty=options.tty,
        isolation=options.isolation,
    )


def run_ephemeral(store: Store, image: ImageRecord, profile: Profile, options: RunOptions) -> int:
    """Run in a throw-away sandbox over ``image``; its changes vanish on exit."""
    settings = settings_for(profile, options, profile.name.replace(".", "-"))
    with store.temporary("run") as tmp:
        for sub in ("upper", "work", "root"):
            (tmp / sub).mkdir()
        root = OverlayRoot((image.rootfs,), tmp / "upper", tmp / "work", tmp / "root")
        return enter(_spec(root, settings, options))


def create(store: Store, name: str, image: ImageRecord, profile: Profile, options: RunOptions) -> SandboxRecord:
    settings = settings_for(profile, options, name.replace(".", "-").replace("_", "-"))
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
    return store.create_sandbox(name, meta)


def run_in(store: Store, record: SandboxRecord, options: RunOptions) -> int:
    """Run a command in a named sandbox; its changes stay in the sandbox."""
    image = store.image(record.image_key)
    if image is None:
        raise SandboxError(
            f"the image {record.image_key} of sandbox {record.name!r} is gone",
            hint=f"remove the sandbox (sandboxmgr rm {record.name}) and create it again",
        )
    saved = Settings.from_json(record.meta["settings"])
    env = dict(saved.env)
    env.update(parse_env(options.env))
    settings = Settings(
        hostname=options.hostname or saved.hostname,
        env=env,
        workdir=options.workdir or saved.workdir,
        user=options.user or saved.user,
        network=options.network or saved.network,
        binds=saved.binds + options.binds,
    )
    lock = store.lock("sandbox", record.name)
    lock.acquire(False, f"sandbox {record.name!r} is in use",
                 "one command at a time runs in a named sandbox; wait for the other to finish")
    with lock:
        root = OverlayRoot((image.rootfs,), record.upper, record.work, record.root)
        return enter(_spec(root, settings, options))
