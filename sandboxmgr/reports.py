"""Package versions named in a bug report's text, for ``sandboxmgr recreate``.

Three shapes are read, mixed freely (a report often pastes one into another):

* reportbug's: the ``Package:`` and ``Version:`` header of the reported package, and
  the rows under ``Versions of packages X depends on:`` (``ii  libc6  2.36-9``, an
  alternative's name in brackets: ``ii  debconf [debconf-2.0]  1.5.82``);
* ``dpkg -l``: ``ii  libc6:amd64  2.36-9  amd64  GNU C Library...``;
* ``dpkg-query -W``: ``libc6:amd64<TAB>2.36-9``.

Only installed rows count (``ii``, ``hi``: not ``pn  foo  <none>``). A report is
hostile input - pasted from anywhere: its size, its lines' length and the number of
versions are bounded, each name, version and arch must be a valid one, and every
refusal is one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.linux import regular_bytes
from sandboxmgr.lockfile import ARCH_RE, NAME_RE, VERSION_RE, Package

MAX_BYTES = 1 << 20
MAX_LINE = 1000
MAX_VERSIONS = 5000
_NAME = r"[a-z0-9][a-z0-9+.-]*"
_ROW = re.compile(rf"(?P<status>[uihrp][ncUHFWti])R?\s+(?P<name>{_NAME})(?::(?P<arch>[a-z0-9-]+))?"
                  r"(?:\s+\[[^\]]*\])?\s+(?P<version>\S+)(?:\s+(?P<column>\S+))?")
_QUERY = re.compile(rf"(?P<name>{_NAME})(?::(?P<arch>[a-z0-9-]+))?\t(?P<version>\S+)\s*")
_HEADER = re.compile(r"(?P<key>Package|Version): *(?P<value>\S+) *")
_HINT = "give reportbug's report, 'dpkg -l' or 'dpkg-query -W' output"


def read_report(path: Path) -> str:
    """A report file's text (at most MAX_BYTES); SandboxError, one line, otherwise."""
    try:
        _mode, data = regular_bytes(path, MAX_BYTES)  # a device or a FIFO is never opened
    except OSError as exc:
        raise SandboxError(f"cannot read the report {shown(path)}: {exc.strerror}", hint=_HINT) from None
    if data is None:
        raise SandboxError(f"{shown(path)}: not a regular file", hint=_HINT)
    if len(data) > MAX_BYTES:
        raise SandboxError(f"{shown(path)}: larger than {MAX_BYTES >> 10} KiB; not a bug report",
                           hint="keep the report's package lists only")
    return data.decode(errors="replace")


def _row(line: str) -> tuple[str, str, str] | None:
    """(name, version, arch) of one installed row, or None."""
    match = _QUERY.fullmatch(line)
    if match is not None:
        return match["name"], match["version"], match["arch"] or ""
    match = _ROW.match(line.strip())
    if match is None or match["status"][1] != "i":
        return None
    # dpkg -l's fourth column is the architecture; reportbug's rows end with the version.
    column = match["column"] or ""
    return match["name"], match["version"], match["arch"] or (column if ARCH_RE.fullmatch(column) else "")


def _header(lines: list[str]) -> tuple[str, str, str] | None:
    """reportbug's ``Package:``/``Version:`` of the reported package, from the text's head."""
    found: dict[str, str] = {}
    for line in lines[:40]:
        match = _HEADER.fullmatch(line)
        if match is not None:
            found.setdefault(match["key"], match["value"])
    if "Package" in found and "Version" in found:
        return found["Package"], found["Version"], ""
    return None


def _checked(name: str, version: str, arch: str) -> Package | None:
    if not NAME_RE.fullmatch(name) or not VERSION_RE.fullmatch(version):
        return None
    if arch and not ARCH_RE.fullmatch(arch):
        arch = ""
    return Package(name, arch, version)


def parse(text: str, source: str = "the report") -> list[Package]:
    """The package versions ``text`` names, sorted; SandboxError when it names none, names one
    package at two versions, or names too many."""
    lines = [line.rstrip("\r") for line in text.splitlines()]
    rows = [found for found in map(_row, (line for line in lines if len(line) <= MAX_LINE)) if found]
    header = _header(lines)
    if header is not None:
        rows.insert(0, header)
    versions: dict[str, Package] = {}
    for name, version, arch in rows:
        package = _checked(name, version, arch)
        if package is None:
            continue  # a truncated column of dpkg -l ('...'), <none>: not a version
        known = versions.get(name)
        if known is not None and known.version != version:
            raise SandboxError(f"{source} names {name} at two versions, {shown(known.version)} and {shown(version)}",
                               hint="keep the lists of one system only")
        if known is None or (arch and not known.arch):
            versions[name] = package
        if len(versions) > MAX_VERSIONS:
            raise SandboxError(f"{source} names more than {MAX_VERSIONS} package versions", hint=_HINT)
    if not versions:
        raise SandboxError(f"{source} names no installed package versions", hint=_HINT)
    return sorted(versions.values())
