"""An RPM source as ``package build`` takes it: a ``.src.rpm``, or a ``.spec`` with its sources
beside it (given itself, or as the one spec of a directory).

Nothing of the source runs on the host: a ``.src.rpm``'s header is read here byte by byte
(its NAME, VERSION, RELEASE and REQUIRE* tags, as ``rpm -qp --requires`` would print them),
and a ``.spec`` is read as text, expanding only the macros it defines itself with
``%global``/``%define`` (``rpmspec`` would run any ``%(...)`` in it, as root). What cannot be
known on the host without running the spec - a ``BuildRequires`` under ``%if``, or one
naming a macro the distribution defines - is left to ``rpmbuild``'s own check of the build
requirements inside the sandbox, which then fails at the ``build-deps`` stage, naming them.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr.errors import warn
from sandboxmgr.linux import regular_bytes
from sandboxmgr.pkgsource import Source, SourceError

_BIGGEST = 1 << 20  # bytes of a spec, of a header
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")
_VERSION_RE = re.compile(r"(?:[0-9]+:)?[A-Za-z0-9._+~^]+(?:-[A-Za-z0-9._+~^]+)?\Z")  # [E:]V[-R]
# A requirement as dnf takes it on its command line: never an option (a leading '-'), no
# control character; a rich dependency in parentheses, or a name with an optional version.
_REQUIRE_RE = re.compile(r"(\([^\x00-\x1f\x7f]*\)|[A-Za-z0-9_/][^\s<>=\x00-\x1f\x7f]*"
                         r"(?: (?:<|<=|=|>=|>) [A-Za-z0-9._+~^:-]+)?)\Z")
_HINT = "give a .src.rpm, a .spec with its sources beside it, or a directory holding one .spec"
# The spec's sections; tags count only in a preamble (the top, or a %package's).
_SECTIONS = re.compile(r"%(description|prep|build|install|check|clean|files|changelog|pre|post|preun|postun|"
                       r"pretrans|posttrans|trigger\w*|filetrigger\w*|transfiletrigger\w*|verifyscript|"
                       r"generate_buildrequires|conf)\b")
_CONDITIONALS = re.compile(r"%(if|ifarch|ifnarch|ifos|ifnos)\b")
# Header tags (rpmtag.h) and dependency flags (rpmds.h).
_NAME, _VERSION, _RELEASE, _EPOCH = 1000, 1001, 1002, 1003
_REQUIREFLAGS, _REQUIRENAME, _REQUIREVERSION = 1048, 1049, 1050
_LESS, _GREATER, _EQUAL, _RPMLIB = 0x02, 0x04, 0x08, 1 << 24
_HEADER_MAGIC = b"\x8e\xad\xe8\x01"


@dataclass(frozen=True)
class Spec:
    """What the host reads of a spec: its name and version, and what it needs."""

    name: str
    version: str
    build_requires: tuple[str, ...]
    sources: tuple[str, ...]  # the file names of its Source/Patch tags
    unread: tuple[str, ...]  # BuildRequires the host cannot evaluate (left to rpmbuild's check)


def read_rpm_source(path: Path) -> Source:
    """The RPM source at ``path`` (resolved): a .src.rpm, a .spec, or a directory with one .spec."""
    if path.is_dir():
        specs = sorted(p for p in path.glob("*.spec") if p.is_file())
        if len(specs) != 1:
            raise SourceError(f"{path} holds {len(specs)} .spec files", hint=_HINT)
        path = specs[0]
    if path.name.endswith(".src.rpm") and path.is_file():
        header = read_header(_read(path))
        return Source("rpm", path, *_checked(header.name, header.version, str(path)),
                      _requires(header.build_requires, str(path)))
    if path.suffix == ".spec" and path.is_file():
        text = _read(path)
        if len(text) > _BIGGEST:
            raise SourceError(f"{path} is larger than {_BIGGEST} bytes", hint="is this really a spec file?")
        spec = parse_spec(text.decode("utf-8", errors="replace"), str(path))
        if spec.unread:
            warn(f"{path}: BuildRequires the host does not evaluate, left to rpmbuild's own check: "
                 f"{', '.join(spec.unread)[:200]}")
        return Source("rpm", path, *_checked(spec.name, spec.version, str(path)),
                      _requires(spec.build_requires, str(path)), spec.sources)
    raise SourceError(f"{path}: not an RPM source", hint=_HINT)


def _read(path: Path) -> bytes:
    try:
        _mode, data = regular_bytes(path, _BIGGEST)  # a FIFO or a device in a source tree is never opened
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}", hint=_HINT) from None
    if data is None:
        raise SourceError(f"cannot read {path}: not a regular file", hint=_HINT)
    return data


def _checked(name: str, version: str, where: str) -> tuple[str, str]:
    if not _NAME_RE.match(name):
        raise SourceError(f"{where}: {name!r} is not a package name", hint="name it with letters, digits, '._+-'")
    if not _VERSION_RE.match(version):
        raise SourceError(f"{where}: {version!r} is not a version the host can read",
                          hint="write the Version (and Release) without macros the distribution defines, "
                               "or give the .src.rpm (rpmbuild -bs)")
    return name, version


def _requires(needs: tuple[str, ...], where: str) -> tuple[tuple[str, str], ...]:
    """The build requirements as a source's build-dependency fields; each goes to dnf's command line."""
    for need in needs:
        if not _REQUIRE_RE.match(need):
            raise SourceError(f"{where}: BuildRequires {need!r} is not a requirement",
                              hint="write 'name', 'name >= version' or a rich dependency '(a or b)'")
    return tuple(("BuildRequires", need) for need in needs)


# --- .spec -------------------------------------------------------------------------------------


def parse_spec(text: str, where: str) -> Spec:
    """The name, version, build requirements and sources of a spec, read as text."""
    macros: dict[str, str] = {}
    tags: dict[str, str] = {}
    needs: list[str] = []
    unread: list[str] = []
    sources: list[str] = []
    depth = 0
    preamble = True
    for line in _joined(text):
        stripped = line.strip()
        if _CONDITIONALS.match(stripped):
            depth += 1
        elif stripped.startswith("%endif") and depth:
            depth -= 1
        elif re.match(r"%(global|define)\s", stripped) and not depth:
            parts = stripped.split(None, 2)
            if len(parts) == 3 and "(" not in parts[1]:
                macros[parts[1]] = parts[2]
        elif stripped.startswith("%package"):
            preamble = True
        elif _SECTIONS.match(stripped):
            preamble = False
        elif preamble and stripped.startswith("%{") and "buildrequires:" in stripped.lower():
            unread.append(stripped)  # a tag inside a macro (%{?with_x:BuildRequires: y})
        elif preamble and (tag := re.match(r"([A-Za-z]+[0-9]*)\s*:\s*(.*)", stripped)):
            key, value = tag.group(1).lower(), _expand(tag.group(2), macros)
            if key in ("name", "version", "release", "epoch") and not depth and key not in tags:
                tags[key] = value
                macros.setdefault(key, value)
            elif key == "buildrequires":
                (unread if depth or "%" in value else needs).extend(split_requires(value))
            elif re.fullmatch(r"(source|patch)[0-9]*", key) and not depth and "%" not in value:
                sources.append(value.rstrip("/").rsplit("/", 1)[-1].split("#", 1)[0])
    if "name" not in tags or "version" not in tags:
        raise SourceError(f"{where}: no Name or Version tag", hint="see rpm's spec file format")
    return Spec(tags["name"], tags["version"], tuple(dict.fromkeys(needs)), tuple(dict.fromkeys(sources)),
                tuple(unread))


def _joined(text: str) -> list[str]:
    """The spec's lines, a backslash-continued line joined to the next; comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if not pending and raw.lstrip().startswith("#"):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    return [*lines, pending] if pending else lines


def _expand(value: str, macros: dict[str, str], depth: int = 0) -> str:
    """``value`` with the spec's own macros expanded (``%name``, ``%{name}``, ``%{?name}``,
    ``%{?name:text}``, ``%{!?name:text}``); any other macro stays as written."""
    def one(match: re.Match[str]) -> str:
        negate, conditional, name, text = match.group(1), match.group(2), match.group(3), match.group(4)
        if conditional:
            known = name in macros
            if text is None:
                return macros.get(name, "") if not negate else ""
            return text if known != bool(negate) else ""
        return macros.get(name, match.group(0))

    expanded = re.sub(r"%\{(!)?(\?)?([A-Za-z_]\w*)(?::([^{}]*))?\}", one, value)
    expanded = re.sub(r"%([A-Za-z_]\w*)", lambda m: macros.get(m.group(1), m.group(0)), expanded)
    return _expand(expanded, macros, depth + 1) if expanded != value and depth < 10 else expanded.replace("%%", "%")


def split_requires(value: str) -> list[str]:
    """One BuildRequires value as requirements: ``a >= 1, b c`` -> ``a >= 1``, ``b``, ``c``;
    a rich dependency ``(a or b)`` stays whole."""
    tokens = re.findall(r"\([^()]*(?:\([^()]*\)[^()]*)*\)|[^\s,]+", value)
    found: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in ("<", "<=", "=", ">=", ">") and found and index + 1 < len(tokens):
            found[-1] += f" {token} {tokens[index + 1]}"
            index += 2
            continue
        found.append(token)
        index += 1
    return found


# --- .src.rpm ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    name: str
    version: str  # [EPOCH:]VERSION-RELEASE
    build_requires: tuple[str, ...]


def read_header(data: bytes) -> Header:
    """A source package's main header: the lead (96 bytes), the signature header (padded to
    8 bytes), then the header whose tags are read here."""
    if len(data) < 96 or data[:4] != b"\xed\xab\xee\xdb":
        raise SourceError("not an RPM package (no RPM lead)", hint=_HINT)
    if struct.unpack(">H", data[6:8])[0] != 1:
        raise SourceError("a binary RPM, not a source package", hint="give the .src.rpm (rpmbuild -bs makes one)")
    signature_size = _header_size(data, 96)
    offset = 96 + signature_size + (-signature_size % 8)
    tags = _tags(data, offset)
    name, version, release = (_string(tags, tag) for tag in (_NAME, _VERSION, _RELEASE))
    epoch = tags.get(_EPOCH)
    full = f"{epoch[0]}:{version}-{release}" if isinstance(epoch, list) and epoch else f"{version}-{release}"
    names, versions, flags = tags.get(_REQUIRENAME, []), tags.get(_REQUIREVERSION, []), tags.get(_REQUIREFLAGS, [])
    if not (isinstance(names, list) and isinstance(versions, list) and isinstance(flags, list)
            and len(names) == len(versions) == len(flags) and all(isinstance(flag, int) for flag in flags)):
        raise SourceError("the package's requirements are malformed", hint=_HINT)
    needs = []
    for need, wanted, flag in zip(names, versions, flags, strict=True):
        if int(flag) & _RPMLIB or str(need).startswith("rpmlib("):
            continue
        sense = ("<" if int(flag) & _LESS else "") + (">" if int(flag) & _GREATER else "") + \
                ("=" if int(flag) & _EQUAL else "")
        needs.append(f"{need} {sense} {wanted}" if sense and wanted else str(need))
    return Header(name, full, tuple(dict.fromkeys(needs)))


def _header_size(data: bytes, offset: int) -> int:
    if data[offset:offset + 4] != _HEADER_MAGIC or len(data) < offset + 16:
        raise SourceError("the package's header is malformed", hint=_HINT)
    count, size = struct.unpack(">II", data[offset + 8:offset + 16])
    total = int(16 + 16 * count + size)
    if len(data) < offset + total:
        raise SourceError("the package's header is truncated", hint=_HINT)
    return total


def _tags(data: bytes, offset: int) -> dict[int, str | list[str | int]]:
    """The header's string (6), string array (8) and 32-bit integer (4) tags."""
    _header_size(data, offset)
    count, size = struct.unpack(">II", data[offset + 8:offset + 16])
    store = offset + 16 + 16 * count
    tags: dict[int, str | list[str | int]] = {}
    for index in range(count):
        tag, kind, where, number = struct.unpack(">iiii", data[offset + 16 + 16 * index:offset + 32 + 16 * index])
        if not 0 <= where < size or number < 0:
            raise SourceError("the package's header is malformed", hint=_HINT)
        start = store + where
        if kind == 4:
            tags[tag] = list(struct.unpack(f">{number}I", data[start:start + 4 * number])) \
                if start + 4 * number <= store + size else []
        elif kind in (6, 8, 9):
            strings = [s.decode("utf-8", errors="replace")
                       for s in data[start:store + size].split(b"\0")[:1 if kind == 6 else number]]
            tags[tag] = strings[0] if kind == 6 and strings else list[str | int](strings)
    return tags


def _string(tags: dict[int, str | list[str | int]], tag: int) -> str:
    value = tags.get(tag)
    if isinstance(value, list):
        value = str(value[0]) if value else None
    if not value:
        raise SourceError(f"the package's header has no tag {tag}", hint=_HINT)
    return value
