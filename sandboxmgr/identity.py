"""Image identity: a profile's build inputs, its layers and its image key.

An image is a stack of layers: the bootstrap, then the packages, then one layer per
setup step, then (``package build`` of an RPM source) one of build packages. Each
layer's key hashes its inputs and its parent's key, so profiles that share a base
share its layers; the image key is the profile's name and its top
layer (images are per profile, like tags; layers are shared). The keys name images
in users' stores: what goes into them never changes without a new BUILD_FORMAT
(tests/unit/test_image_keys.py pins them).

The inputs include digests of the keyring and of file:// gpg keys, so computing an
identity reads files: it is done once per build (:func:`identify`), not by Profile,
which stays pure data.
"""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import distros, linux, lockfile
from sandboxmgr.errors import ProfileError
from sandboxmgr.names import BUILD_FORMAT
from sandboxmgr.profile import Profile

# Inputs of the layers above the bootstrap; every other input belongs to the bootstrap layer.
_ABOVE_BOOTSTRAP = ("packages", "setup", "setup_env", "build_packages", "lock")


@dataclass(frozen=True)
class LayerPlan:
    kind: str  # "bootstrap", "lock", "packages" or "setup"
    key: str
    label: str
    step: str = ""  # the shell step of a setup layer; a lock layer's (or a locked RPM bootstrap's) lock digest
    index: int = -1  # a setup layer's place in the profile's ``setup`` (0 for the first)
    packages: tuple[str, ...] = ()  # what a packages layer installs


@dataclass(frozen=True)
class Identity:
    """What decides a profile's image, computed once: the inputs, the layers (bottom first), the key."""

    inputs: dict[str, Any]
    layers: tuple[LayerPlan, ...]
    key: str


def digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


_MAX_DIGESTED = 16 << 20  # a keyring or a repository's GPG key: kilobytes


def file_digest(path: Path) -> str:
    """The sha256 of a regular file's bytes; OSError otherwise. Every verb that computes a key
    (``profiles``, ``run``) reads the profile's keyring: ``keyring: /dev/zero`` or a FIFO must
    neither hang them nor be opened (linux.regular_bytes), a huge file never read whole."""
    _mode, data = linux.regular_bytes(path, _MAX_DIGESTED)
    if data is None:
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    if len(data) > _MAX_DIGESTED:
        raise OSError(errno.EFBIG, f"larger than {_MAX_DIGESTED >> 20} MiB", str(path))
    return hashlib.sha256(data).hexdigest()


def lock_digest(path: str) -> str:
    """The sha256 of a lock file's bytes (``missing:PATH`` when it cannot be read: the build says why).
    Read as the build reads it (lockfile.read_bytes): bounded, a regular file only - every verb that
    computes a key (``profiles``, ``run``) reads it, and ``lock: /dev/zero`` or a FIFO must not hang them."""
    try:
        return hashlib.sha256(lockfile.read_bytes(Path(path))).hexdigest()
    except ProfileError:
        return "missing:" + path


def build_inputs(profile: Profile) -> dict[str, Any]:
    """Everything that decides the image's content, and nothing else."""
    keyring = Path(profile.bootstrap.keyring)
    try:
        keyring_digest = file_digest(keyring)
    except OSError:
        keyring_digest = "missing:" + str(keyring)
    boot = profile.bootstrap
    return {
        "format": BUILD_FORMAT,
        "distro": profile.distro,
        "release": profile.release,
        "arch": profile.arch,
        "bootstrap": {
            "method": boot.method,
            "variant": boot.variant,
            "mirror": boot.mirror,
            "components": list(boot.components),
            "keyring_sha256": keyring_digest,
            "include": list(boot.include),
            "exclude": list(boot.exclude),
            "extra_args": list(boot.extra_args),
        },
        "packages": list(profile.packages),
        "setup": list(profile.setup),
        # Setup steps run with the profile's environment, so it is one of their inputs.
        **({"setup_env": dict(sorted(profile.env.items()))} if profile.setup else {}),
        **({"build_packages": list(profile.build_packages)} if profile.build_packages else {}),
        # The lock's content, not its path: a changed lock is a new image.
        **({"lock": lock_digest(profile.lock)} if profile.lock else {}),
        # The family's own inputs (the RPM family's repositories and rpm settings).
        **distros.of(profile).build_inputs(profile),
    }


def identify(profile: Profile) -> Identity:
    """The image as a stack of layers, bottom first, and its key."""
    inputs = build_inputs(profile)
    base: dict[str, Any] = {key: value for key, value in inputs.items() if key not in _ABOVE_BOOTSTRAP}
    # A family may bootstrap the packages themselves (a custom RPM distro with neither a
    # release package nor bootstrap.include): they are then an input of the bootstrap
    # layer, and there is no packages layer.
    packages_in_bootstrap = distros.of(profile).packages_in_bootstrap(profile)
    if packages_in_bootstrap:
        base["packages"] = list(profile.packages)
    lock_in_bootstrap = bool(profile.lock) and distros.of(profile).lock_in_bootstrap()
    if lock_in_bootstrap:
        base["lock"] = inputs["lock"]
    plan = [LayerPlan("bootstrap", digest({"layer": "bootstrap", **base}),
                      f"bootstrap {profile.distro} {profile.release} ({profile.bootstrap.method})",
                      step=inputs["lock"] if lock_in_bootstrap else "")]  # the lock digest it installs
    if profile.lock and not lock_in_bootstrap:
        # Every locked version, installed over the bootstrap before anything else (images.py).
        plan.append(LayerPlan("lock", digest({"parent": plan[-1].key, "lock": inputs["lock"]}),
                              f"lock: {Path(profile.lock).name}", step=inputs["lock"]))
    if profile.packages and not packages_in_bootstrap:
        plan.append(LayerPlan("packages", digest({"parent": plan[-1].key, "packages": list(profile.packages)}),
                              f"packages: {' '.join(profile.packages)}", packages=profile.packages))
    for number, step in enumerate(profile.setup, 1):
        key = digest({"parent": plan[-1].key, "setup": step, "env": inputs.get("setup_env", {})})
        first_line = step.strip().splitlines()[0] if step.strip() else ""
        plan.append(LayerPlan("setup", key, f"setup {number}: {first_line[:60]}", step,
                              number - 1))
    if profile.build_packages:
        plan.append(LayerPlan("packages", digest({"parent": plan[-1].key, "packages": list(profile.build_packages)}),
                              f"build packages: {' '.join(profile.build_packages)}", packages=profile.build_packages))
    return Identity(inputs, tuple(plan), digest({"profile": profile.name, "top": plan[-1].key}))


def layers(profile: Profile) -> list[LayerPlan]:
    return list(identify(profile).layers)


def image_key(profile: Profile) -> str:
    """The key of ``profile``'s image."""
    return identify(profile).key
