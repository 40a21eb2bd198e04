"""Unpacking one OCI layer - a tar from someone else: hostile input - into a new layer's diff.

Every entry is made below the layer's directory and nowhere else, whatever the tar says:

- a name is split into components; an absolute name or a ``..`` component refuses the image;
- each directory on the way is opened with O_NOFOLLOW from its parent's descriptor (openat), so
  an entry never goes through a symlink, even one an earlier entry made (a symlink to ``/etc``
  then ``link/passwd`` refuses the image) - symlinks themselves are made as they are: they are
  only ever read inside the sandbox, whose root is the image;
- a hard link must name a regular file this layer made already (looked up the same way): never
  a file outside, a directory or a symlink;
- device nodes are left out (counted, one warning): an image carries none, a sandbox gets its
  own /dev, and a block device in a layer would be the host's disk to root inside;
- owners are numeric (names are ignored); modes keep setuid and setgid bits, as a built image's
  (the store is root's alone); of the xattrs only ``security.capability`` is set (never
  overlayfs's own ``trusted.overlay.*``);
- ``.wh.NAME`` becomes an overlayfs whiteout (a character device 0/0) unless this layer has
  NAME itself (a directory NAME of this layer, before or after it, is made opaque: the lower
  one's files are gone); ``.wh..wh..opq`` makes its directory opaque; other ``.wh..wh.`` names
  are skipped.

A later entry replaces an earlier file of the same name (tar's rule); a file never replaces a
directory (refused). The tar itself is read with bounds (:class:`Bounded`): a PAX header or a GNU
long name over 1 MiB, a chain of more than 8 of them before one entry, a sparse file, or a name of
more than 256 components refuses the image, in one line - each would otherwise cost memory, a
Python recursion, or a tree the store's removal and export cannot walk. Nothing of the stream is
kept in memory once its entry is made. The caller unpacks into the store's tmp/ and publishes only a complete,
verified layer.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.ocilayer import CARRIED_XATTRS, ENCODING, ERRORS, OPAQUE, PAX_XATTR, WHITEOUT_PREFIX

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no change" to chown
MAX_HEADER = 1 << 20  # a PAX header or a GNU long name: a few hundred bytes in practice
MAX_CHAIN = 8  # PAX and GNU headers before one entry (tarfile reads each with a recursion)
MAX_DEPTH = 256  # components of a name: real images stay below 100
SPECIAL = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
           tarfile.GNUTYPE_LONGLINK)
CHUNK = 1 << 20
HINT = "the image was not imported; nothing of it is in the store"


class HostileTar(tarfile.TarError):
    """A tar an image has no business with (see :class:`Bounded`); said as an invalid tar."""


class Bounded(tarfile.TarInfo):
    """A tar header, read with bounds: tarfile reads a PAX header or a GNU long name whole into
    memory (a gzip layer of 8 MB holds one of 8 GB), follows a chain of them with a recursion
    (2000 of them: RecursionError), and reads a sparse file's map without a limit and writes
    its holes out whole. Each of those refuses the image instead."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise HostileTar(f"{shown(self.name)} is a sparse file (an image's layer has none)")
        if self.type not in SPECIAL:
            return super()._proc_member(tar)  # type: ignore[misc, no-any-return]
        if self.size > MAX_HEADER:
            raise HostileTar(f"a PAX header or GNU long name of {self.size} bytes, more than {MAX_HEADER}")
        chain = getattr(tar, "bounded_chain", 0)
        if chain >= MAX_CHAIN:
            raise HostileTar(f"more than {MAX_CHAIN} PAX headers or GNU long names before one entry")
        tar.bounded_chain = chain + 1  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tar)  # type: ignore[misc, no-any-return]
        finally:
            tar.bounded_chain = chain  # type: ignore[attr-defined]

    def _proc_gnusparse_00(self, following: tarfile.TarInfo, *_args: object) -> None:
        raise HostileTar(f"{shown(following.name)} is a sparse file (an image's layer has none)")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


class Unpacker:
    def __init__(self, diff: Path, label: str, opaque_xattr: str) -> None:
        self.label = label
        self.opaque_xattr = opaque_xattr
        self.root_fd = os.open(diff, DIRECTORY)
        # Their mtimes are set last (entries change them); one per directory, however often named.
        self.dirs: dict[tuple[str, ...], int] = {}
        self.devices = 0

    def refuse(self, name: str, why: str) -> SandboxError:
        return SandboxError(f"{self.label}: entry {shown(name)} {why}", hint=HINT)

    def parts(self, name: str) -> list[str]:
        if name.startswith("/"):
            raise self.refuse(name, "is an absolute path")
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "leaves the layer (..)")
        if len(parts) > MAX_DEPTH:
            raise self.refuse(name[:80] + "...", f"is {len(parts)} directories deep, more than {MAX_DEPTH}")
        return parts

    def open_dir(self, parts: list[str], name: str, create: bool = True) -> int:
        """A descriptor of the directory ``parts`` below the layer's root, made when missing,
        reached without following a symlink."""
        fd = os.dup(self.root_fd)
        for index, part in enumerate(parts):
            try:
                try:
                    following = os.open(part, DIRECTORY, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    following = os.open(part, DIRECTORY, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise self.refuse(name, f"goes through {shown('/'.join(parts[:index + 1]))}, "
                                            "which is a symlink or not a directory") from None
                raise
            os.close(fd)
            fd = following
        return fd

    def unpack(self, stream: IO[bytes]) -> None:
        with tarfile.open(fileobj=stream, mode="r|", encoding=ENCODING, errors=ERRORS, tarinfo=Bounded) as tar:
            while (entry := tar.next()) is not None:
                # tarfile keeps every entry it read: a layer of millions of them, all in memory.
                tar.members.clear()  # type: ignore[attr-defined]
                try:
                    self.entry(tar, entry)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or exc.errno is None:
                        raise  # the store's own trouble (said as such), or the stream's
                    raise self.refuse(entry.name, f"cannot be made: {exc.strerror}") from None
                except (ValueError, OverflowError) as exc:  # a NUL in a name, an mtime of 1e30
                    raise self.refuse(entry.name, f"is not a valid entry: {exc}") from None
        for path, mtime in self.dirs.items():
            parts = list(path)
            fd = self.open_dir(parts, "/".join(parts), create=False)
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def entry(self, tar: tarfile.TarFile, entry: tarfile.TarInfo) -> None:
        parts = self.parts(entry.name)
        if not parts:
            return  # the layer's root keeps its own owner and mode
        if not (0 <= entry.uid <= MAX_ID and 0 <= entry.gid <= MAX_ID):
            raise self.refuse(entry.name, f"has an impossible owner {entry.uid}:{entry.gid}")
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, entry)
            return
        if entry.ischr() or entry.isblk():
            self.devices += 1
            return
        fd = self.open_dir(parts[:-1], entry.name)
        try:
            if entry.isdir():
                self.directory(fd, parts, entry)
                return
            self.clear(fd, parts[-1], entry.name)
            if entry.isreg():
                self.file(fd, parts[-1], entry, tar)
            elif entry.issym():
                os.symlink(entry.linkname, parts[-1], dir_fd=fd)
                os.chown(parts[-1], entry.uid, entry.gid, dir_fd=fd, follow_symlinks=False)
                os.utime(parts[-1], (entry.mtime, entry.mtime), dir_fd=fd, follow_symlinks=False)
            elif entry.islnk():
                self.hard_link(fd, parts[-1], entry)
            elif entry.isfifo():
                os.mkfifo(parts[-1], 0o600, dir_fd=fd)
                self.own(fd, parts[-1], entry)
            else:
                raise self.refuse(entry.name, f"has a type an image has no use for ({entry.type!r})")
        finally:
            os.close(fd)

    def own(self, fd: int, name: str, entry: tarfile.TarInfo) -> None:
        """Owner, then mode (chown drops setuid bits), then mtime of an entry just made in ``fd``."""
        os.chown(name, entry.uid, entry.gid, dir_fd=fd, follow_symlinks=False)
        os.chmod(name, stat.S_IMODE(entry.mode), dir_fd=fd)  # made by us just now: not a symlink
        os.utime(name, (entry.mtime, entry.mtime), dir_fd=fd, follow_symlinks=False)

    def clear(self, fd: int, name: str, full: str) -> None:
        """Make way for a new entry: an earlier one of the same name goes, unless a directory."""
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            raise self.refuse(full, "would replace a directory with a file")
        os.unlink(name, dir_fd=fd)

    def directory(self, fd: int, parts: list[str], entry: tarfile.TarInfo) -> None:
        name = parts[-1]
        replaced_whiteout = False
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                replaced_whiteout = stat.S_ISCHR(info.st_mode) and info.st_rdev == 0
                os.unlink(name, dir_fd=fd)
                os.mkdir(name, 0o700, dir_fd=fd)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=fd)
        made = os.open(name, DIRECTORY, dir_fd=fd)
        try:
            if replaced_whiteout:  # .wh.NAME, then NAME/: the lower NAME is gone, this one is new
                os.setxattr(made, self.opaque_xattr, b"y")
            os.fchown(made, entry.uid, entry.gid)
            os.fchmod(made, stat.S_IMODE(entry.mode))
            self.xattrs(made, entry)
        finally:
            os.close(made)
        self.dirs[tuple(parts)] = int(entry.mtime)

    def file(self, fd: int, name: str, entry: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        made = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        try:
            source = tar.extractfile(entry)
            while source is not None and (chunk := source.read(CHUNK)):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(made, view):]
            os.fchown(made, entry.uid, entry.gid)
            os.fchmod(made, stat.S_IMODE(entry.mode))
            self.xattrs(made, entry)
            os.utime(made, (entry.mtime, entry.mtime))
        finally:
            os.close(made)

    def xattrs(self, fd: int, entry: tarfile.TarInfo) -> None:
        for key in CARRIED_XATTRS:
            value = entry.pax_headers.get(PAX_XATTR + key)
            if value is not None:
                os.setxattr(fd, key, value.encode(ENCODING, ERRORS))

    def hard_link(self, fd: int, name: str, entry: tarfile.TarInfo) -> None:
        target = self.parts(entry.linkname)
        if not target:
            raise self.refuse(entry.name, "is a hard link to the layer's root")
        try:
            source_fd = self.open_dir(target[:-1], entry.name, create=False)
        except FileNotFoundError:
            raise self.refuse(entry.name, f"is a hard link to {shown(entry.linkname)}, not a file of this layer") \
                from None
        try:
            try:
                info = os.stat(target[-1], dir_fd=source_fd, follow_symlinks=False)
            except FileNotFoundError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                raise self.refuse(entry.name, f"is a hard link to {shown(entry.linkname)}, "
                                              "not a regular file of this layer")
            os.link(target[-1], name, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(source_fd)

    def whiteout(self, parts: list[str], entry: tarfile.TarInfo) -> None:
        base, full = parts[-1], entry.name
        if base != OPAQUE and base.startswith(WHITEOUT_PREFIX * 2):
            return  # aufs's own (.wh..wh.plnk and the like): nothing of the image
        fd = self.open_dir(parts[:-1], full)
        try:
            if base == OPAQUE:
                os.setxattr(fd, self.opaque_xattr, b"y")
                return
            hidden = base[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise self.refuse(full, "whites out nothing a layer can have")
            try:
                info = os.stat(hidden, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=fd)
                # Its owner and mtime are the .wh. file's: exported again, it is the same entry.
                os.chown(hidden, entry.uid, entry.gid, dir_fd=fd, follow_symlinks=False)
                os.utime(hidden, (entry.mtime, entry.mtime), dir_fd=fd, follow_symlinks=False)
                return
            # This layer's own entry of that name wins (image-spec); a directory of its own hides
            # the lower one's contents, as a directory made anew would.
            if stat.S_ISDIR(info.st_mode):
                made = os.open(hidden, DIRECTORY, dir_fd=fd)
                try:
                    os.setxattr(made, self.opaque_xattr, b"y")
                finally:
                    os.close(made)
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.root_fd)


def unpack_layer(stream: IO[bytes], diff: Path, label: str, opaque_xattr: str) -> int:
    """Unpack the tar ``stream`` into the empty directory ``diff``; the device nodes left out."""
    unpacker = Unpacker(diff, label, opaque_xattr)
    try:
        unpacker.unpack(stream)
    finally:
        unpacker.close()
    return unpacker.devices
