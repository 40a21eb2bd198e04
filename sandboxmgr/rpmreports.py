"""Package versions named in a bug report of an RPM-family system, for ``sandboxmgr recreate``.

Two shapes are read, mixed freely with other text:

* ``rpm -qa``: one ``NAME-VERSION-RELEASE.ARCH`` a line, an epoch before the version
  when it has one (``perl-Errno-1:1.36-498.fc38.x86_64``, as ``--qf '%{NEVRA}'`` prints);
* ``dnf list installed``: ``NAME.ARCH  [EPOCH:]VERSION-RELEASE  @REPO`` rows under the
  ``Installed Packages`` heading (a row of ``dnf list``'s ``Available Packages`` is not
  installed, so it does not count); a name too long for its column is on a line of its
  own, its version and repository on the next.

The rules are reports.py's: a report is hostile input, bounded in size, line length and
number of versions; every name, epoch, version, release and arch must be one rpm and a
lock can hold (lockfile.rpm_package), or the row is not a version (``gpg-pubkey-...``, a
prompt, a truncated line); a package (name and arch) named at two versions is refused,
but for an install-only one (``kernel``, ``kernel-*``: several versions are installed side
by side); no version at all is refused. Lines are split, never matched by a backtracking
pattern: a hostile line costs its length.
"""

from __future__ import annotations

from dataclasses import replace

from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.lockfile import MAX_EPOCH, Package, rpm_package
from sandboxmgr.reports import MAX_LINE, MAX_VERSIONS

ARCHES = frozenset({"noarch", "x86_64", "x86_64_v2", "x86_64_v3", "x86_64_v4", "i386", "i486", "i586", "i686",
                    "aarch64", "ppc64le", "ppc64", "s390x", "armv7hl", "armhfp", "riscv64", "loongarch64"})
_HINT = "give 'rpm -qa' or 'dnf list installed' output"


def _evr(text: str) -> tuple[int | None, str, str] | None:
    """(epoch, None without one, version, release) of ``[EPOCH:]VERSION-RELEASE``, or None."""
    rest, dash, release = text.rpartition("-")
    if not dash:
        return None
    epoch_text, colon, version = rest.rpartition(":")
    if not colon:
        return None, rest, release
    if not (epoch_text.isascii() and epoch_text.isdigit() and len(epoch_text) <= 10):
        return None  # "-1", "1e3", "abc", ""
    epoch = int(epoch_text)
    return (epoch, version, release) if epoch <= MAX_EPOCH else None


def nevra(word: str) -> Package | None:
    """The package of one ``NAME-[EPOCH:]VERSION-RELEASE.ARCH``, or None."""
    head, dot, arch = word.rpartition(".")
    if not dot or arch not in ARCHES:
        return None
    rest, dash, release = head.rpartition("-")
    name, dash2, version = rest.rpartition("-")
    if not (dash and dash2):
        return None
    found = _evr(f"{version}-{release}")
    package = rpm_package(name, found[0], found[1], found[2], arch) if found else None
    # rpm -qa prints no epoch (%{nvra}): none is one the line does not know, not 0.
    return replace(package, epoch_known=False) if package and found and found[0] is None else package


def list_row(words: list[str]) -> Package | None:
    """The package of one ``dnf list`` row's columns (``NAME.ARCH EVR [REPO]``), or None."""
    if len(words) not in (2, 3):
        return None
    name, dot, arch = words[0].rpartition(".")
    found = _evr(words[1])
    if not dot or arch not in ARCHES or found is None:
        return None
    return rpm_package(name, found[0], found[1], found[2], arch)


def _heading(line: str) -> str | None:
    """``installed``, ``other`` for another of dnf's headings, None for anything else."""
    words = line.strip().lower().split()
    if len(words) < 2 or len(words) > 4 or words[-1] != "packages" or not line.strip()[:1].isupper():
        return None
    return "installed" if words == ["installed", "packages"] else "other"


def _rows(lines: list[str]) -> list[Package]:
    found: list[Package] = []
    section = None
    for index, line in enumerate(lines):
        heading = _heading(line)
        if heading is not None:
            section = heading
            continue
        words = line.split()
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if len(words) == 1 and following[:1] in (" ", "\t") and list_row(words + following.split()):
            # A name too long for dnf's column, its version below: never read as a NEVRA of its own
            # (python3-a-b.noarch would be python3 at version a-b).
            package = list_row(words + following.split()) if section == "installed" else None
        elif len(words) == 1:
            package = nevra(words[0])
        else:
            package = list_row(words) if section == "installed" else None
        if package is not None:
            found.append(package)
    return found


def _installonly(name: str) -> bool:
    return name == "kernel" or name.startswith("kernel-")


def parse(text: str, source: str = "the report") -> list[Package]:
    """The package versions ``text`` names, sorted; SandboxError when it names none, names one
    package at two versions, or names too many. A line without an epoch (rpm -qa's) and one with
    it (dnf list's) of the same version and release are one version, the epoch known."""
    lines = [line for line in text.split("\n") if len(line) <= MAX_LINE]
    first: dict[tuple[str, str], Package] = {}
    kept: dict[tuple[str, str, str], Package] = {}  # by name, arch and VERSION-RELEASE
    for package in _rows([line.rstrip("\r") for line in lines]):
        key = (package.name, package.arch, package.version.partition(":")[2])
        same, known = kept.get(key), first.setdefault(key[:2], package)
        if same is not None:
            if same.epoch_known and package.epoch_known and same.version != package.version:
                raise _two(source, same, package)
            if same.epoch_known or not package.epoch_known:
                continue
        elif known is not package and not _installonly(package.name):
            raise _two(source, known, package)
        kept[key] = package
        if len(kept) > MAX_VERSIONS:
            raise SandboxError(f"{source} names more than {MAX_VERSIONS} package versions", hint=_HINT)
    if not kept:
        raise SandboxError(f"{source} names no installed package versions", hint=_HINT)
    return sorted(kept.values())


def _two(source: str, one: Package, other: Package) -> SandboxError:
    return SandboxError(f"{source} names {other.name}.{other.arch} at two versions, "
                        f"{shown(one.nevra())} and {shown(other.nevra())}", hint="keep the lists of one system only")
