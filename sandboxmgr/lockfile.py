"""Lock files: every package of an image with its exact version, as YAML.

``sandboxmgr lock PROFILE`` writes one from a built image (locking.py); a profile's
``lock: FILE`` makes its build install exactly those versions and check the result
(images.py). The shape (``LOCK_FORMAT`` 1)::

    lock_format: 1
    profile: debian-bookworm
    image: 0123abcd...            # the image key the lock was taken from
    distro: debian
    release: bookworm
    arch: amd64
    mirror: http://deb.debian.org/debian
    archive_date: Sat, 10 Feb 2024 09:50:14 UTC   # the Release file's Date (or null)
    packages:                     # sorted by name, then arch
    - {name: adduser, version: 3.134, arch: all}

An RPM-family lock (Fedora, CentOS Stream, AlmaLinux, Rocky) says ``family: rpm``
after ``lock_format``, its ``mirror`` is the first repository's URL, its ``archive_date``
null, and each package is ``{name, epoch, version, release, arch}`` (``epoch`` a number,
0 when the package has none); in memory its ``version`` is ``EPOCH:VERSION-RELEASE``.

A lock file is a user's file, so it is read as hostile input: bounded in size and
count, every name, version and arch checked against its family's rules, one-line errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import yaml

from sandboxmgr.errors import ProfileError, counted, shown
from sandboxmgr.linux import regular_bytes

LOCK_FORMAT = 1
MAX_BYTES = 8 << 20
MAX_PACKAGES = 50_000
# Debian policy 5.6.1 (names), 5.6.12 (versions: [epoch:]upstream[-revision]); arch names.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,199}\Z")
# Never ending in '-' (an empty revision, which dpkg refuses): apt-get install reads a trailing
# '-' of NAME=VERSION as "remove NAME", so a lock or a report could turn an install into a removal.
VERSION_RE = re.compile(r"(?:[0-9]{1,9}:)?[A-Za-z0-9](?:[A-Za-z0-9.+~_-]{0,198}[A-Za-z0-9.+~_])?"
                        r"(?::[A-Za-z0-9.+~_-]*[A-Za-z0-9.+~_])*\Z")
ARCH_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}\Z")
# RPM's: never starting with '-' (dnf would read an option), never a '-' in a version or release
# (NAME-VERSION-RELEASE.ARCH is split at the last two), never a '.' in an arch.
RPM_NAME_RE = re.compile(r"[A-Za-z0-9_+](?:[A-Za-z0-9._+-]{0,198}[A-Za-z0-9._+])?\Z")  # no '-' at its end
RPM_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~^]{0,127}\Z")
# Never "rpm": dnf reads an argument ending in ".rpm" (the pin's end: .ARCH) as a file to install.
RPM_ARCH_RE = re.compile(r"(?![Rr][Pp][Mm]\Z)[A-Za-z0-9_]{1,32}\Z")
MAX_EPOCH = (1 << 32) - 1  # rpm's EPOCH tag is a 32-bit number
_KEYS = ("lock_format", "family", "profile", "image", "distro", "release", "arch", "mirror", "archive_date",
         "packages")
_RPM_KEYS = ("name", "epoch", "version", "release", "arch")


@dataclass(frozen=True, order=True)
class Package:
    name: str
    arch: str
    version: str  # an RPM package's: EPOCH:VERSION-RELEASE, the epoch always there (rpm_package)
    family: str = "debian"
    # False for a report's rpm -qa line (rpm prints no epoch): its 0 stands for "not known".
    epoch_known: bool = field(default=True, compare=False)

    def pin(self, native: str) -> str:
        """apt's ``name=version`` (``name:arch=version`` for a foreign architecture); dnf's
        ``name-epoch:version-release.arch`` for an RPM package, the epoch always there: dnf reads
        a NEVRA without one as any epoch, and installs the highest (foo-1-1 would be 1:1-1)."""
        if self.family == "rpm":
            return self.nevra(always_epoch=True)
        if self.arch in (native, "all", ""):
            return f"{self.name}={self.version}"
        return f"{self.name}:{self.arch}={self.version}"

    def nevra(self, always_epoch: bool = False) -> str:
        """``name-[epoch:]version-release.arch``, as rpm -q prints it (no epoch 0 unless asked for)."""
        epoch, _, rest = self.version.partition(":")
        return f"{self.name}-{'' if epoch == '0' and not always_epoch else epoch + ':'}{rest}.{self.arch}"

    def shown(self) -> str:
        if self.family == "rpm":
            return self.nevra()
        return f"{self.name}={self.version}" + (f" ({self.arch})" if self.arch else "")

    def rpm_fields(self) -> dict[str, Any]:
        epoch, _, rest = self.version.partition(":")
        version, _, release = rest.rpartition("-")
        return {"name": self.name, "epoch": int(epoch), "version": version, "release": release, "arch": self.arch}


def rpm_package(name: str, epoch: int | None, version: str, release: str, arch: str) -> Package | None:
    """An RPM package (no epoch is epoch 0, as dnf compares them); None when a field is not one
    rpm and a lock can hold."""
    epoch = epoch or 0
    if not (RPM_NAME_RE.fullmatch(name) and RPM_VERSION_RE.fullmatch(version)
            and RPM_VERSION_RE.fullmatch(release) and RPM_ARCH_RE.fullmatch(arch) and 0 <= epoch <= MAX_EPOCH):
        return None
    return Package(name, arch, f"{epoch}:{version}-{release}", "rpm")


@dataclass(frozen=True)
class Lock:
    profile: str
    image: str
    distro: str
    release: str
    arch: str
    mirror: str
    archive_date: str | None
    packages: tuple[Package, ...]
    family: str = "debian"

    def as_dict(self) -> dict[str, Any]:
        """The documented shape, keys in their order (YAML and ``lock --json``)."""
        rpm = self.family == "rpm"
        return {
            "lock_format": LOCK_FORMAT, **({"family": "rpm"} if rpm else {}), "profile": self.profile,
            "image": self.image, "distro": self.distro, "release": self.release, "arch": self.arch,
            "mirror": self.mirror, "archive_date": self.archive_date,
            "packages": [p.rpm_fields() if rpm else {"name": p.name, "version": p.version, "arch": p.arch}
                         for p in self.packages],
        }

    def pins(self) -> tuple[str, ...]:
        return tuple(package.pin(self.arch) for package in self.packages)

    def snapshot_hint(self) -> str:
        """Where an archive of the lock's date is, for a mirror that has moved on."""
        if self.family == "rpm":
            return ("point 'repositories:' at a repository that still holds these versions "
                    "(the release's archive: a vault, or the build system's)")
        stamp = snapshot_stamp(self.archive_date) or "YYYYMMDDTHHMMSSZ"
        where = (f"https://snapshot.ubuntu.com/ubuntu/{stamp}/" if self.distro == "ubuntu"
                 else f"https://snapshot.debian.org/archive/{self.distro}/{stamp}/")
        date = self.archive_date or "unknown"
        return f"point bootstrap.mirror at an archive of the lock's date ({date}), e.g. {where}"


def snapshot_stamp(date: str | None) -> str | None:
    """A Release file's ``Date`` as snapshot.debian.org's ``20240210T095014Z``; None if unreadable."""
    if not date:
        return None
    try:
        when = parsedate_to_datetime(date)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        # A lock's date is the user's text: 'Fri, 31 Dec 9999 23:59:59 -2359' overflows in UTC.
        return datetime.strftime(when.astimezone(UTC), "%Y%m%dT%H%M%SZ")
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def dump(lock: Lock) -> str:
    """The lock as YAML: stable order, one line per package."""
    header = (f"# sandboxmgr lock file of profile {lock.profile} (image {lock.image}).\n"
              "# A profile's 'lock: FILE' builds exactly these versions; see README, \"Lock files\".\n")
    return header + yaml.safe_dump(lock.as_dict(), sort_keys=False, default_flow_style=None, width=1 << 16)


def _quoted(value: object) -> str:
    """A value of the file in a message: a scalar quoted (the first 100 characters), a collection
    named only - an alias bomb's text is exponential in the file's size, and is never built."""
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'map'}"
    text = str(value)
    return shown(text if len(text) <= 100 else text[:100] + "...")


def _problem(path: Path, what: str) -> ProfileError:
    return ProfileError(f"{shown(path)}: {what}", hint="make it again with 'sandboxmgr lock PROFILE -o FILE'")


def _text(path: Path, data: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None,
          optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 4096 or not value.isprintable():
        raise _problem(path, f"{key} must be a line of text")
    if pattern is not None and not pattern.fullmatch(value):
        raise _problem(path, f"{key} {_quoted(value)} is not valid")
    return value


def _rpm_package(path: Path, index: int, item: Any) -> Package:
    if not isinstance(item, dict) or set(item) != set(_RPM_KEYS):
        raise _problem(path, f"packages[{index}] must be a map of name, epoch, version, release and arch")
    epoch = item["epoch"]
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:  # not true, not 1.0, not "1"
        raise _problem(path, f"packages[{index}].epoch {_quoted(epoch)} is not a number from 0 to {MAX_EPOCH}")
    values = {}
    for key, pattern in (("name", RPM_NAME_RE), ("version", RPM_VERSION_RE), ("release", RPM_VERSION_RE),
                         ("arch", RPM_ARCH_RE)):
        value = item[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a version YAML read as a number: 1.0 (written quoted)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _problem(path, f"packages[{index}].{key} {_quoted(value)} is not a valid package {key}")
        values[key] = value
    package = rpm_package(values["name"], epoch, values["version"], values["release"], values["arch"])
    assert package is not None
    return package


def _package(path: Path, index: int, item: Any) -> Package:
    if not isinstance(item, dict) or set(item) != {"name", "version", "arch"}:
        raise _problem(path, f"packages[{index}] must be a map of name, version and arch")
    values = {key: item[key] for key in ("name", "version", "arch")}
    for key, pattern in (("name", NAME_RE), ("version", VERSION_RE), ("arch", ARCH_RE)):
        value = values[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = values[key] = str(value)  # a version YAML read as a number: 1.0 (written quoted)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _problem(path, f"packages[{index}].{key} {_quoted(value)} is not a valid package {key}")
    return Package(values["name"], values["arch"], values["version"])


def parse(path: Path, text: str) -> Lock:
    """A lock from its YAML text; ProfileError naming ``path`` for anything wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _problem(path, f"not valid YAML{where}") from None
    except RecursionError:  # [[[[... nested deeper than the parser's recursion goes
        raise _problem(path, "not a lock file (YAML nested too deep)") from None
    if not isinstance(data, dict):
        raise _problem(path, "not a lock file (a YAML map is expected)")
    unknown = sorted(str(key) for key in data if key not in _KEYS)
    if unknown:
        raise _problem(path, f"unknown key {_quoted(unknown[0])}")
    if type(data.get("lock_format")) is not int or data.get("lock_format") != LOCK_FORMAT:  # not true, not 1.0
        raise _problem(path, f"lock_format {_quoted(data.get('lock_format'))} is not {LOCK_FORMAT}")
    family = data.get("family", "debian")
    if family not in ("debian", "rpm"):
        raise _problem(path, f"family {_quoted(family)} is not debian or rpm")
    items = data.get("packages")
    if not isinstance(items, list) or not items:
        raise _problem(path, "packages must be a non-empty list")
    if len(items) > MAX_PACKAGES:
        raise _problem(path, f"more than {MAX_PACKAGES} packages")
    reader = _rpm_package if family == "rpm" else _package
    packages = sorted(reader(path, index, item) for index, item in enumerate(items))
    seen: set[tuple[str, ...]] = set()
    for package in packages:
        # RPM: one name and arch at two versions is an install-only package's (kernels), not a mistake.
        key = (package.name, package.arch, package.version) if family == "rpm" else (package.name, package.arch)
        if key in seen:
            twice = package.shown() if family == "rpm" else f"{package.name} ({package.arch})"
            raise _problem(path, f"package {twice} is listed twice")
        seen.add(key)
    return Lock(profile=_text(path, data, "profile"), image=_text(path, data, "image"),
                distro=_text(path, data, "distro"), release=_text(path, data, "release"),
                arch=_text(path, data, "arch", RPM_ARCH_RE if family == "rpm" else ARCH_RE),
                mirror=_text(path, data, "mirror"),
                archive_date=_text(path, data, "archive_date", optional=True), packages=tuple(packages),
                family=family)


def read_bytes(path: Path) -> bytes:
    """The lock file's bytes, at most MAX_BYTES; ProfileError when it cannot be read."""
    try:
        _mode, data = regular_bytes(path, MAX_BYTES)
    except OSError as exc:
        raise ProfileError(f"cannot read the lock file {shown(path)}: {exc.strerror}",
                           hint="make it with 'sandboxmgr lock PROFILE -o FILE', or fix 'lock:'") from None
    if data is None:
        raise _problem(path, "not a regular file")
    if len(data) > MAX_BYTES:
        raise _problem(path, f"larger than {MAX_BYTES >> 20} MiB")
    return data


def load(path: Path) -> Lock:
    data = read_bytes(path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise _problem(path, "not UTF-8 text") from None
    return parse(path, text)


def differences(lock: Lock, installed: list[Package], limit: int = 5) -> str | None:
    """What the installed set has that the lock has not, and the other way round; None when equal."""
    wanted, found = set(lock.packages), set(installed)
    if wanted == found:
        return None
    parts = []
    missing, extra = sorted(wanted - found), sorted(found - wanted)
    for what, items in (("not installed as locked", missing), ("installed but not locked", extra)):
        if items:
            listed = ", ".join(package.shown() for package in items[:limit])
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{counted(len(items), 'package')} {what}: {listed}{more}")
    return "; ".join(parts)
