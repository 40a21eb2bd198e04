"""What a Debian-family image has installed, read from its layers on the host.

The same list ``dpkg-query -W -f '${Package} ${Version} ${Architecture}'`` prints
inside, read from ``/var/lib/dpkg/status`` of the topmost layer that has it, and
the archive's ``Date`` from the Release file apt keeps in ``/var/lib/apt/lists``.
Nothing is run and nothing is mounted: reading is all it takes, and it cannot
change the image. A layer's files were written by build steps that ran as root
inside, so they are hostile: no symlink is followed on the way
(inroot.open_in_root), only regular files are read, and their sizes are bounded.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from sandboxmgr.errors import BuildError, SandboxError, shown
from sandboxmgr.inroot import open_in_root
from sandboxmgr.lockfile import ARCH_RE, NAME_RE, VERSION_RE, Package

STATUS = "var/lib/dpkg/status"
LISTS = "var/lib/apt/lists"
MAX_STATUS = 64 << 20
MAX_RELEASE = 1 << 20
_DATE_RE = re.compile(r"^Date: *(.+?) *$", re.MULTILINE)
# The states in which a package's files are in the image (dpkg-query -W lists them): not only
# "installed" - a step's 'dpkg --unpack' of another version is no less there for not being
# configured. Not "not-installed", nor "config-files" (removed: only its conffiles are left).
_PRESENT = frozenset({"installed", "unpacked", "half-configured", "half-installed", "triggers-awaited",
                      "triggers-pending"})


def _in_layer(layer: Path, parts: list[str]) -> tuple[int | None, bool]:
    """(an O_PATH descriptor of ``parts`` in one layer or None, whether the layers below are hidden).

    As overlayfs looks a path up: a whiteout (a 0/0 character device) or a non-directory on the
    way means the merged image has no such file, whatever the layers below hold; an opaque
    directory on the way hides what the layers below have under it."""
    current = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    hidden = False
    try:
        for index, name in enumerate(parts):
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            except FileNotFoundError:
                return None, hidden
            os.close(current)
            current = fd
            info = os.fstat(fd)
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                return None, True  # an overlayfs whiteout: deleted in this layer
            if stat.S_ISLNK(info.st_mode):
                raise SandboxError(f"/{'/'.join(parts)} is reached through a symlink in layer {layer.parent.name}; "
                                   "not read",
                                   hint="the image was changed by a build step; build it again (build --rebuild)")
            if index == len(parts) - 1:
                current = -1
                return fd, True
            if not stat.S_ISDIR(info.st_mode):
                return None, True  # a file where a directory was: nothing below it
            hidden = hidden or _opaque(fd)
        return None, hidden
    finally:
        if current != -1:
            os.close(current)


def _opaque(fd: int) -> bool:
    """Whether a layer's directory is opaque (overlayfs's xattr; ``user.`` with userxattr)."""
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(f"/proc/self/fd/{fd}", name) == b"y":
                return True
        except OSError:
            continue
    return False


def image_file(layers: list[Path], path: str, limit: int) -> bytes | None:
    """The bytes of regular file ``path`` as the image made of ``layers`` (bottom first) shows it:
    from the topmost layer that has it, None when the image has no such file (a whiteout or an
    opaque directory above hides a lower layer's); SandboxError for a symlink on the way,
    something else in its place, or too many bytes."""
    parts = [part for part in path.split("/") if part]
    for layer in reversed(layers):
        fd, hidden = _in_layer(layer, parts)
        if fd is not None:
            return _regular(layer, path, fd, limit)
        if hidden:
            return None
    return None


def _regular(layer: Path, path: str, fd: int, limit: int) -> bytes:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SandboxError(f"/{path} is not a regular file in layer {layer.parent.name}",
                               hint="the image was changed by a build step; build it again (build --rebuild)")
        if info.st_size > limit:
            raise SandboxError(f"/{path} in layer {layer.parent.name} is larger than {limit >> 20} MiB",
                               hint="this is not a package database sandboxmgr reads")
        with open(f"/proc/self/fd/{fd}", "rb") as handle:
            return handle.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def parse_status(text: str) -> list[Package]:
    """The packages of a dpkg status file whose files are in the image, sorted; stanzas of
    packages not installed (or only their conffiles) are left out; SandboxError for a package
    whose name, version or architecture is not one a lock can hold."""
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        # Lines end at "\n" only, as dpkg's do: str.splitlines() would also end one at "\r", "\f",
        # "\x1c", "\x85", "\u2028"..., so a field's value (a Maintainer: from a .deb, written
        # before Version:) could make a "Version:" line of its own that wins.
        for line in stanza.split("\n"):
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines (descriptions, conffiles)
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        name, version, arch = fields.get("package", ""), fields.get("version", ""), fields.get("architecture", "")
        state = fields.get("status", "").split()
        if len(state) != 3 or state[2] not in _PRESENT:
            continue
        if not (NAME_RE.fullmatch(name) and VERSION_RE.fullmatch(version) and ARCH_RE.fullmatch(arch)):
            # Never skipped: a package the lock cannot name would be in the image and in no lock,
            # and the check after a locked build would not see it either.
            raise SandboxError(f"the dpkg database has {_short(name)} {_short(version)} ({_short(arch)}), "
                               "a name, version or architecture a lock file cannot hold",
                               hint="lock files take Debian's names and versions (at most 200 characters): "
                                    "remove that package from the image")
        found.append(Package(name, arch, version))
    return sorted(found)


def _short(value: str) -> str:
    return shown(value if len(value) <= 60 else value[:60] + "...")


def installed(layers: list[Path]) -> list[Package]:
    """The packages installed in the image made of ``layers`` (their diff directories, bottom first)."""
    data = image_file(layers, STATUS, MAX_STATUS)
    if data is not None:
        return parse_status(data.decode(errors="replace"))
    raise BuildError("the image has no dpkg database (/var/lib/dpkg/status)",
                     hint="lock files are made of Debian-family images")


def _listing(layer: Path, path: str) -> list[str]:
    """The names in directory ``path`` of one layer; none when it is not a directory there
    (or a symlink is on the way)."""
    root = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root, path, follow=False)
    except (OSError, SandboxError):
        return []
    finally:
        os.close(root)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            return []
        return os.listdir(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _list_name(mirror: str, release: str) -> str:
    """apt's file name of a mirror's InRelease in its lists: the URL without its scheme, '/' as '_'."""
    base = re.sub(r"^[a-z]+://", "", mirror.rstrip("/"))
    return f"{base.replace('/', '_')}_dists_{release}_InRelease"


def archive_date(layers: list[Path], mirror: str, release: str) -> str | None:
    """The ``Date`` of the Release file the image's package lists came from (None: not found)."""
    wanted = _list_name(mirror, release)
    for layer in reversed(layers):
        ends = (f"_dists_{release}_InRelease", f"_dists_{release}_Release")
        others = [n for n in _listing(layer, LISTS) if n.endswith(ends)]
        # Under another name (a file:// mirror, a redirect): only when it is the one there is.
        names = [wanted, *(others if len(others) == 1 else [])]
        for name in dict.fromkeys(names):
            data = image_file(layers, f"{LISTS}/{name}", MAX_RELEASE)
            if data is None:
                continue
            match = _DATE_RE.search(data.decode(errors="replace"))
            if match and match.group(1).isprintable():
                return match.group(1)[:100]
    return None
