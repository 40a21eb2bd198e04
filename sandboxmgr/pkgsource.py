"""A package's source as ``package build`` takes it: what it is, its name and version, and what
it needs to build.

Only what is read here decides anything on the host: the source's files are otherwise
opened inside the build's sandbox only. A Debian source is a tree with ``debian/control``
and ``debian/changelog``, or a ``.dsc`` (its files beside it). The fields are deb822
paragraphs, read by :func:`paragraphs` (RFC 822 style: ``Key: value`` and continuation
lines, a blank line between paragraphs, an OpenPGP armour around a signed ``.dsc``).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr.errors import SandboxError
from sandboxmgr.linux import regular_bytes

# The fields of a source that name what its build needs (Debian Policy 7.7).
BUILD_DEP_FIELDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep",
                    "Build-Conflicts", "Build-Conflicts-Arch", "Build-Conflicts-Indep")
# What dpkg accepts as a source package's name and version (Policy 5.6.1, 5.6.12).
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+\Z")
_VERSION_RE = re.compile(r"(?:[0-9]+:)?[0-9A-Za-z.+~-]+\Z")
_CHANGELOG_RE = re.compile(r"([a-z0-9][a-z0-9+.-]+) \(([^()\s]+)\)")
_BIGGEST = 1 << 20  # bytes of a control file, a changelog's first line's file, a .dsc


class SourceError(SandboxError):
    """The source cannot be read: the ``source`` stage of ``package build``."""


@dataclass(frozen=True)
class Source:
    family: str  # "debian" or "rpm"
    path: Path  # the tree or the .dsc (the .spec or the .src.rpm), absolute
    name: str
    version: str
    build_deps: tuple[tuple[str, str], ...]  # (field, value), in BUILD_DEP_FIELDS order (BuildRequires)
    sources: tuple[str, ...] = ()  # a .spec's Source/Patch files, expected beside it

    @property
    def upstream_version(self) -> str:
        """The version without its epoch and Debian revision: the unpacked tree's suffix."""
        version = self.version.split(":", 1)[-1]
        return version.rsplit("-", 1)[0] if "-" in version else version

    @property
    def tree_name(self) -> str:
        return f"{self.name}-{self.upstream_version}"


def paragraphs(text: str, where: str) -> list[dict[str, str]]:
    """deb822 paragraphs; a signed file's armour is left out."""
    lines = text.splitlines()
    if lines and lines[0].startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        body = lines[lines.index("") + 1:] if "" in lines else []
        lines = body[:next((n for n, line in enumerate(body) if line.startswith("-----BEGIN PGP SIGNATURE")),
                           len(body))]
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            if current:
                found.append(current)
            current, key = {}, ""
        elif line.startswith("#"):
            continue
        elif line[0] in " \t":
            if not key:
                raise SourceError(f"{where}:{number}: a continuation line before any field",
                                  hint="fix the file: see deb822(5)")
            current[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            current[key] = value.strip()
        else:
            raise SourceError(f"{where}:{number}: not a 'Field: value' line", hint="fix the file: see deb822(5)")
    if current:
        found.append(current)
    return found


def _read(path: Path) -> str:
    try:
        _mode, read = regular_bytes(path, _BIGGEST)  # a FIFO or a device in a source tree is never opened
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}", hint="give a Debian source tree or a .dsc") from None
    if read is None:
        raise SourceError(f"cannot read {path}: not a regular file", hint="give a Debian source tree or a .dsc")
    data = read
    if len(data) > _BIGGEST:
        raise SourceError(f"{path} is larger than {_BIGGEST} bytes", hint="is this really a control file?")
    return data.decode("utf-8", errors="replace")


def _checked(name: str, version: str, where: str) -> tuple[str, str]:
    if not _NAME_RE.match(name):
        raise SourceError(f"{where}: {name!r} is not a source package name", hint="see Debian Policy 5.6.1")
    if not _VERSION_RE.match(version):
        raise SourceError(f"{where}: {version!r} is not a package version", hint="see Debian Policy 5.6.12")
    return name, version


def _deps(fields: dict[str, str], where: str) -> tuple[tuple[str, str], ...]:
    deps = []
    for field in BUILD_DEP_FIELDS:
        value = fields.get(field)
        if value is None:
            continue
        if not all(part.isprintable() for part in value.split("\n")):
            raise SourceError(f"{where}: {field} holds control characters", hint="fix the field")
        deps.append((field, value))
    return tuple(deps)


def read_source(path: Path) -> Source:
    """The source at ``path``: a tree with ``debian/`` or a ``.dsc``; or an RPM source
    (rpmsource.py): a ``.src.rpm``, a ``.spec``, a directory with one ``.spec``."""
    path = path.resolve()
    if path.is_dir() and ((path / "debian").exists() or not any(path.glob("*.spec"))):
        control = path / "debian" / "control"
        if not control.is_file():
            raise SourceError(f"{path} has no debian/control",
                              hint="give a Debian source tree (with debian/), a .dsc, a .spec or a .src.rpm")
        source = paragraphs(_read(control), str(control))[:1] or [{}]
        changelog = _read(path / "debian" / "changelog").lstrip()
        head = _CHANGELOG_RE.match(changelog)
        if head is None:
            raise SourceError(f"{path / 'debian' / 'changelog'}: the first line is not 'name (version) ...'",
                              hint="see dch(1)")
        name, version = _checked(head.group(1), head.group(2), str(path / "debian" / "changelog"))
        return Source("debian", path, name, version, _deps(source[0], str(control)))
    if path.suffix == ".dsc" and path.is_file():
        fields = (paragraphs(_read(path), str(path)) or [{}])[0]
        name, version = _checked(fields.get("Source", ""), fields.get("Version", ""), str(path))
        return Source("debian", path, name, version, _deps(fields, str(path)))
    if path.suffix in (".spec", ".rpm") or (path.is_dir() and any(path.glob("*.spec"))):
        from sandboxmgr.rpmsource import read_rpm_source

        return read_rpm_source(path)
    raise SourceError(f"{path}: not a package source",
                      hint="give a Debian source tree (with debian/) or a .dsc, a .src.rpm, or a .spec with its "
                           "sources beside it")


BUILD_USER = "sandboxmgr-build"


def build_deps_step(source: Source) -> str:
    """The setup step that installs what ``source`` needs to build (apt-get build-dep on a control
    file of its build-dependency fields, as sbuild resolves them, build-essential included) and
    makes the unprivileged build user. Its text, and so its layer's key, is made of those
    fields only: a second source with the same needs reuses the layer. The fields travel in
    base64, so that nothing in them is ever read by the shell."""
    control = "Source: sandboxmgr-build-deps\n" + "".join(f"{field}: {value}\n" for field, value in source.build_deps)
    encoded = base64.b64encode(control.encode()).decode()
    needs = " ".join(dict(source.build_deps).get("Build-Depends", "nothing but build-essential").split())
    return (
        f"# build dependencies: {needs[:100]}\n"
        "set -e\n"
        "mkdir -p /tmp/build-deps/debian\n"
        f"echo {encoded} | base64 -d > /tmp/build-deps/debian/control\n"
        "apt-get build-dep -y -q --no-install-recommends /tmp/build-deps\n"
        # What sbuild installs besides: dpkg-buildpackage gains root through it unless the
        # source says Rules-Requires-Root: no.
        "apt-get install -y -q --no-install-recommends fakeroot\n"
        "rm -rf /tmp/build-deps\n"
        f"id -u {BUILD_USER} >/dev/null 2>&1 || useradd --create-home --shell /bin/sh {BUILD_USER}\n"
    )


def unsatisfiable(log: str) -> list[str]:
    """The packages apt (or dnf) named as what it could not install, from its output."""
    names: list[str] = []
    patterns = (r"Unable to locate package (\S+)", r"the package (\S+) cannot be found",
                r"Depends: (\S+)[^\n]*but it is not (?:installable|going to be installed)",
                r"Package '?(\S+?)'? has no installation candidate",
                r"No match for argument: (\S+)", r"nothing provides (\S+)")
    for pattern in patterns:
        for name in re.findall(pattern, log):
            if name not in names:
                names.append(name)
    return names
