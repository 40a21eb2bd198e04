"""``sandboxmgr lock`` and ``sandboxmgr recreate``: an image's exact package set, and a
bug report's versions pinned.

``lock`` reads a built image's installed packages (dpkgstatus.py, rpmdb.py for the
RPM family: from its layers, read-only) into a lock file (lockfile.py). ``recreate``
writes a profile that extends the one named and pins every version a report names
(reports.py, rpmreports.py), builds it, and says which of those versions the archive
lacks: they are dropped from the profile, with a comment saying so, and the image is
built with the others.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr import dpkgstatus, locked, reports, rpmreports
from sandboxmgr.builders import MissingVersions
from sandboxmgr.catalog import image_layers
from sandboxmgr.errors import SandboxError, shown, warn
from sandboxmgr.linux import regular_bytes
from sandboxmgr.lockfile import Lock, Package
from sandboxmgr.names import check_name
from sandboxmgr.profile import Profile, ProfileRegistry, is_path_ref
from sandboxmgr.store import ImageRecord, Store

Build = Callable[[Profile], ImageRecord]
_MARK = "# Made by sandboxmgr recreate"
_OTHER_NAME = "choose another name with --as, or another place with -o"


def take(store: Store, profile: Profile, record: ImageRecord) -> Lock:
    """The lock of ``record``, an image of ``profile``."""
    layers = [layer.diff for layer in image_layers(store, record)]
    packages = tuple(locked.installed(profile, layers))
    if profile.family == "rpm":
        repo = profile.repositories[0] if profile.repositories else None
        urls = [*repo.baseurl, repo.metalink or "", repo.mirrorlist or ""] if repo is not None else []
        return Lock(profile=profile.name, image=record.key, distro=profile.distro, release=profile.release,
                    arch=profile.arch, mirror=next((url for url in urls if url), "none"), archive_date=None,
                    packages=packages, family="rpm")
    mirror = profile.bootstrap.mirror
    return Lock(profile=profile.name, image=record.key, distro=profile.distro, release=profile.release,
                arch=profile.arch, mirror=mirror, archive_date=dpkgstatus.archive_date(layers, mirror, profile.release),
                packages=packages)


@dataclass
class Recreated:
    profile: Profile
    path: Path
    record: ImageRecord
    pinned: list[str]
    lacking: list[str]
    foreign: list[str]


def lacks(family: str) -> str:
    """What lacks a version a report names: an RPM profile's repositories, a Debian one's archive."""
    return "repositories lack" if family == "rpm" else "archive lacks"


def _profile_text(base: str, report: Path, pins: list[str], lacking: list[str], foreign: list[str],
                  base_family: str) -> str:
    lines = [f"{_MARK} from {shown(report.name)}: the versions it names, pinned.",
             *(f"# The {lacks(base_family)} {pin}: not pinned." for pin in lacking),
             *(f"# {pin}: another architecture; not pinned." for pin in foreign),
             # Quoted: a report's file name ("bug: 12.txt", "*x") or a profile's path is text, never YAML.
             f"extends: {json.dumps(base)}",
             f"description: {json.dumps(f'{shown(report.name)} recreated over {base}')}",
             "packages:" if pins else "packages: []",
             *(f"  - '{pin}'" for pin in pins)]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """``text`` as the file ``path``, unless something recreate did not write is there. Neither a
    symlink (a dangling one would make root create its target) nor a FIFO or a device is read or
    written through: the directory may be anyone's (/tmp), and the report came from anywhere."""
    try:
        mode, data = regular_bytes(path, len(_MARK), follow=False)
    except FileNotFoundError:
        mode, data = 0, None
    except OSError as exc:
        raise SandboxError(f"{shown(path)} cannot be read ({exc.strerror}); not overwritten",
                           hint=_OTHER_NAME) from None
    if stat.S_ISLNK(mode):
        raise SandboxError(f"{shown(path)} is a symlink; not overwritten", hint=_OTHER_NAME)
    if mode and (data is None or not data.startswith(_MARK.encode())):
        raise SandboxError(f"{shown(path)} exists and was not made by recreate; not overwritten", hint=_OTHER_NAME)
    write_file(path, text, _OTHER_NAME)


def write_file(path: Path, text: str, hint: str = "choose another -o") -> None:
    """``text`` as the file ``path``, whole or not at all: written to a new file of a name no one
    can guess (never through a symlink planted there), then renamed over ``path`` - only over a
    regular file: a rename over ``-o /dev/stdout`` (a symlink) or a device would replace the host's."""
    if path.name in ("", ".."):
        raise SandboxError(f"-o {shown(path)} is not a file name", hint=hint)  # "" reads as "."
    temporary = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise SandboxError(f"{shown(path)} is not a regular file; not replaced",
                               hint=f"{hint}; without -o, lock prints the lock file")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SandboxError(f"cannot write {shown(path)}: {exc.strerror}", hint=hint) from None
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise SandboxError(f"cannot write {shown(path)}: {exc.strerror}", hint=hint) from None


def _pin(package: Package, native: str) -> str:
    """A report's version pinned; an RPM one with its epoch when the report gives it (dnf list's,
    0 too), without when it does not (rpm -qa's): dnf reads a NEVRA without one as any epoch."""
    return package.nevra(always_epoch=package.epoch_known) if package.family == "rpm" else package.pin(native)


def recreate(registry: ProfileRegistry, report: Path, base_ref: str, name: str | None, out: Path | None,
             build: Build) -> Recreated:
    """Write the recreated profile (``out``, else ./NAME.yaml), build it, report what was lacking."""
    base = registry.load(base_ref)
    parser = rpmreports.parse if base.family == "rpm" else reports.parse
    packages = parser(reports.read_report(report), shown(report))
    name = name or (out.stem if out is not None else f"{base.name}-report")
    check_name(name, "profile name (--as)")
    path = (out or Path.cwd() / f"{name}.yaml").absolute()
    if path.stem != name or not is_path_ref(str(path)):
        raise SandboxError(f"-o {shown(out)} must be a file named {name}.yaml", hint="a profile's name is its file's")
    base_text = str(base.path) if is_path_ref(base_ref) else base.name
    native = [p for p in packages if p.arch in ("", "all", "noarch", base.arch)]
    foreign = [_pin(p, base.arch) for p in packages if p not in native]
    pins, lacking = [_pin(p, base.arch) for p in native], list[str]()
    for _attempt in range(2):
        _write(path, _profile_text(base_text, report, pins, lacking, foreign, base.family))
        # A registry of its own each time: a registry holds a file to what it read first.
        profile = ProfileRegistry(registry.dirs).load(str(path))
        try:
            return Recreated(profile, path, build(profile), pins, lacking, foreign)
        except MissingVersions as exc:
            if _attempt or not set(exc.missing) & set(pins):
                raise
            lacking = [pin for pin in pins if pin in exc.missing]
            pins = [pin for pin in pins if pin not in exc.missing]
            warn(f"the {lacks(base.family)} {', '.join(lacking)}; building {name} without those pins")
    raise AssertionError("unreachable")
