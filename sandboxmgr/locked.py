"""Building from a lock file: a profile's ``lock: FILE`` (lockfile.py).

Debian family: the bootstrap runs as always; the layer above it (identity.py's "lock"
layer) installs every locked package at its locked version with the target's apt,
downgrades allowed. RPM family: the bootstrap itself (``dnf --installroot``) installs
exactly the locked versions (``name-[epoch:]version-release.arch``) and nothing else
(families/rpm.py), and there is no lock layer. The profile's packages (pinned to the
lock's versions) and setup steps follow. When every layer is built, the image's
installed set (dpkgstatus.py, rpmdb.py) must equal the lock's, or there is no image:
the record is never written. The lock is checked before anything is built - it must be
readable, valid, and of the profile's family, distro, release and architecture.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sandboxmgr import dpkgstatus, lockfile, rpmdb
from sandboxmgr.builders import BuildContext, Builder, BuildRoot, MissingVersions
from sandboxmgr.errors import BuildError, ProfileError, shown
from sandboxmgr.identity import lock_digest
from sandboxmgr.lockfile import RPM_NAME_RE, Lock
from sandboxmgr.profile import Profile


def load(profile: Profile) -> Lock:
    """The profile's lock, checked against the profile (ProfileError, one line, otherwise)."""
    assert profile.lock is not None
    path = Path(profile.lock)
    lock = lockfile.load(path)
    ours: tuple[str, ...] = (profile.distro, profile.release, profile.arch)
    theirs: tuple[str, ...] = (lock.distro, lock.release, lock.arch)
    if profile.family != lock.family:
        theirs = (f"{lock.family}-family", *theirs)
        ours = (f"{profile.family}-family", *ours)
    if ours != theirs:
        raise ProfileError(f"{shown(path)} locks {' '.join(theirs)}, but profile {profile.name} is {' '.join(ours)}",
                           hint=f"lock this profile: sandboxmgr lock {profile.name} -o {shown(path)}")
    locked = {package.name for package in lock.packages}
    # An RPM bootstrap installs the lock instead of bootstrap.include: a name added there since
    # would be left out without a word. (A capability - /bin/sh, dnf-command(x) - is no name.)
    rpm = lock.family == "rpm"
    include = [name for name in profile.bootstrap.include if rpm and RPM_NAME_RE.fullmatch(name)]
    for key, names in (("packages", list(map(_name, profile.packages))), ("bootstrap.include", include)):
        unlocked = [name for name in names if name not in locked]
        if unlocked:
            raise ProfileError(f"{profile.path}: {', '.join(unlocked)} of '{key}:' not in the lock "
                               f"{shown(profile.lock)}",
                               hint=f"lock again: remove 'lock:', then sandboxmgr lock {profile.name} -o FILE")
    return lock


def _name(package: str) -> str:
    return package.partition("=")[0].partition(":")[0]


def pinned(lock: Lock, packages: tuple[str, ...]) -> tuple[str, ...]:
    """``packages`` as the lock pins them: a plain ``apt-get install NAME`` after the lock layer
    would take the archive's newest version instead of the locked one. What the lock does not
    name (``package build``'s build dependencies) stays as it is."""
    versions = {package.name: package.pin(lock.arch) for package in lock.packages}
    return tuple(versions.get(_name(package), package) for package in packages)


def unchanged(profile: Profile, key: str) -> None:
    """BuildError when the lock's content is no longer the one of the layer's key (``key``, its
    lock digest; "": a layer that installs no lock)."""
    if key and profile.lock and lock_digest(profile.lock) != key:
        raise BuildError(f"{shown(profile.lock)} changed while {profile.name} was built",
                         hint="build again")


def install(profile: Profile, builder: Builder, root: BuildRoot, context: BuildContext, key: str) -> None:
    """The lock layer: install every locked version into ``root``."""
    assert profile.lock is not None
    lock = load(profile)
    unchanged(profile, key)
    context.progress(f"lock: installing {len(lock.packages)} locked versions from {shown(profile.lock)}")
    try:
        builder.install(replace(profile, packages=lock.pins()), root, context)
    except MissingVersions as exc:
        raise MissingVersions(f"{profile.name}: the archive ({profile.bootstrap.mirror}) lacks "
                              f"{', '.join(exc.missing)} (locked in {shown(profile.lock)})", exc.missing,
                              hint=lock.snapshot_hint()) from None


def verify(profile: Profile, layers: list[Path]) -> None:
    """The built image has exactly the lock's packages, or BuildError. (The layer of ``package
    build``'s build dependencies is not the profile's: the caller leaves it out.)"""
    lock = load(profile)
    difference = lockfile.differences(lock, installed(profile, layers))
    if difference is not None:
        raise BuildError(f"the image of {profile.name} does not match {shown(profile.lock)}: {difference}; "
                         "no image was kept",
                         hint="packages or setup steps added since the lock was made? lock again: "
                              f"sandboxmgr lock {profile.name} -o FILE (without 'lock:' first)")


def installed(profile: Profile, layers: list[Path]) -> list[lockfile.Package]:
    """What the image made of ``layers`` has installed, read by its family's reader."""
    if profile.family == "rpm":
        return rpmdb.installed(layers, profile.bootstrap.rpmdb)
    return dpkgstatus.installed(layers)
