"""One store layer as one OCI layer: a tar stream of its diff, overlayfs whiteouts made OCI's.

A layer's ``diff`` is a whole root (the bootstrap) or an overlayfs upper dir, whose deletions
are overlayfs whiteouts: a character device 0/0 for a removed file, a directory with the
``trusted.overlay.opaque`` xattr (``user.overlay.opaque`` in an ordinary user's store) for a
directory whose lower contents are hidden. OCI's image-spec says the same with files: an empty
``.wh.NAME`` beside it, and ``DIR/.wh..wh..opq``.

The tar is reproducible: entries in byte order of their names, numeric owners only (no user
or group names), each file's own mtime in whole seconds (the layer is read-only: two exports
of it give the same bytes), no atime or ctime, and of the xattrs only ``security.capability``
(file capabilities; overlayfs's own never leave). The tree is read without following a
symlink: entries are listed with lstat and files opened with O_NOFOLLOW.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sandboxmgr.errors import SandboxError

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# overlayfs features the store's mounts never turn on (redirect_dir, metacopy): a layer with
# them is not a tree a tar can carry.
UNSUPPORTED_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect",
                      "trusted.overlay.metacopy", "user.overlay.metacopy")
# The one xattr a layer carries, either way (PAX: SCHILY.xattr.NAME).
CARRIED_XATTRS = ("security.capability",)
PAX_XATTR = "SCHILY.xattr."
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # names are bytes on Linux: any name goes through, PAX says how


def is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in names:
        if name in CARRIED_XATTRS or name in OPAQUE_XATTRS or name in UNSUPPORTED_XATTRS:
            try:
                found[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
    return found


class LayerWriter:
    """Writes one diff as a tar into ``out`` (see the module's docstring)."""

    def __init__(self, diff: Path, out: Any) -> None:
        self.diff = diff
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,  # noqa: SIM115
                                encoding=ENCODING, errors=ERRORS)
        self.links: dict[tuple[int, int], str] = {}  # (dev, inode) -> the first name written
        self.sockets = 0
        self.unnamable: list[str] = []

    def write(self) -> None:
        # Depth first, without a recursion: a tree deeper than Python's 1000 frames is exported too.
        stack = [self._below(self.diff, "")]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
            elif self._entry(*item):
                stack.append(self._below(item[0], item[1] + "/"))
        self.tar.close()

    @staticmethod
    def _below(path: Path, prefix: str) -> Iterator[tuple[Path, str]]:
        return iter([(path / name, prefix + name) for name in sorted(os.listdir(path), key=os.fsencode)])

    def _info(self, name: str, info: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.type = kind
        entry.mode = stat.S_IMODE(info.st_mode)
        entry.uid, entry.gid = info.st_uid, info.st_gid
        entry.uname = entry.gname = ""
        entry.mtime = int(info.st_mtime)
        return entry

    def _entry(self, path: Path, name: str) -> bool:
        """Write the entry of ``path``; whether it is a directory whose entries come next."""
        info = os.lstat(path)
        mode = info.st_mode
        xattrs = _xattrs(path) if not stat.S_ISLNK(mode) else {}
        if any(key in UNSUPPORTED_XATTRS for key in xattrs):
            raise SandboxError(f"{path} uses an overlayfs feature (redirect or metacopy) an OCI layer cannot carry",
                               hint="rebuild the image (sandboxmgr build --rebuild PROFILE), then export it")
        if name.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            self.unnamable.append(name)  # a file named .wh.X would be read as a whiteout of X
        elif is_whiteout(info):
            head, _, base = name.rpartition("/")
            entry = self._info(f"{head}/{WHITEOUT_PREFIX}{base}" if head else WHITEOUT_PREFIX + base, info,
                               tarfile.REGTYPE)
            entry.mode = 0
            self.tar.addfile(entry)
        elif stat.S_ISDIR(mode):
            self._add(self._info(name, info, tarfile.DIRTYPE), xattrs)
            if any(xattrs.get(key) == b"y" for key in OPAQUE_XATTRS):
                opaque = self._info(f"{name}/{OPAQUE}", info, tarfile.REGTYPE)
                opaque.mode = 0
                self.tar.addfile(opaque)
            return True
        elif stat.S_ISREG(mode):
            self._file(path, name, info, xattrs)
        elif stat.S_ISLNK(mode):
            entry = self._info(name, info, tarfile.SYMTYPE)
            entry.linkname = os.readlink(path)
            self.tar.addfile(entry)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            entry = self._info(name, info, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
            entry.devmajor, entry.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
            self._add(entry, xattrs)
        elif stat.S_ISFIFO(mode):
            self._add(self._info(name, info, tarfile.FIFOTYPE), xattrs)
        else:
            self.sockets += 1  # a tar cannot carry a socket (as docker and podman leave them)
        return False

    def _add(self, entry: tarfile.TarInfo, xattrs: dict[str, bytes], data: IO[bytes] | None = None) -> None:
        carried = {PAX_XATTR + key: value.decode(ENCODING, ERRORS) for key, value in sorted(xattrs.items())
                   if key in CARRIED_XATTRS}
        if carried:
            entry.pax_headers = carried
        self.tar.addfile(entry, data)

    def _file(self, path: Path, name: str, info: os.stat_result, xattrs: dict[str, bytes]) -> None:
        if info.st_nlink > 1:
            first = self.links.get((info.st_dev, info.st_ino))
            if first is not None:
                entry = self._info(name, info, tarfile.LNKTYPE)
                entry.linkname = first
                self.tar.addfile(entry)
                return
            self.links[(info.st_dev, info.st_ino)] = name
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise SandboxError(f"{path} changed while it was exported", hint="export again")
            entry = self._info(name, opened, tarfile.REGTYPE)
            entry.size = opened.st_size
            self._add(entry, xattrs, handle)


def write_layer(diff: Path, out: Any) -> tuple[int, list[str]]:
    """Write the tar of ``diff`` into ``out``; the number of sockets left out, and the names
    left out because OCI reserves them (``.wh.``)."""
    writer = LayerWriter(diff, out)
    writer.write()
    return writer.sockets, writer.unnamable
