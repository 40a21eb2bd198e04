"""Where ``import`` reads an OCI image from: a layout directory, an oci-archive, or whatever
skopeo can copy from (``docker-archive:FILE``, ``docker://REF``, ...), copied first into a
layout in the store's tmp/.

All of it is someone else's: a layout directory is read without following a symlink below
it (a blob that is a symlink to /etc/shadow, or a FIFO, is refused, not read); an archive is
never unpacked - its blobs are read from the tar as they are; every document has a size
limit, and every blob is checked against its descriptor's size and sha256 digest as it is
read (:class:`Verified`), before anything made of it is published.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tarfile
from pathlib import Path
from typing import IO, Any

from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.ociunpack import Bounded

MAX_DOCUMENT = 4 << 20  # index, manifest, config: a few KiB in practice
MAX_ARCHIVE_ENTRIES = 100_000
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# skopeo's transports (containers-transports(5)): SOURCE then is for skopeo to read.
TRANSPORTS = ("docker://", "docker-archive:", "oci-archive:", "oci:", "dir:", "docker-daemon:",
              "containers-storage:")
HINT = "the image was not imported; nothing of it is in the store"


def invalid(what: str) -> SandboxError:
    return SandboxError(f"not a valid OCI image: {what}", hint=HINT)


class Verified:
    """A blob read through: its size and sha256 checked against the descriptor's."""

    def __init__(self, stream: IO[bytes], digest: str, size: int) -> None:
        self.stream, self.digest, self.size = stream, digest, size
        self.hash = hashlib.sha256()
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size if size >= 0 else self.size - self.read_bytes + 1)
        self.hash.update(data)
        self.read_bytes += len(data)
        if self.read_bytes > self.size:
            raise invalid(f"blob {self.digest} is longer than its descriptor's {self.size} bytes")
        return data

    def finish(self) -> None:
        """Read what is left (a tar's padding) and check the whole blob."""
        while self.read(1 << 20):
            pass
        if self.read_bytes != self.size or "sha256:" + self.hash.hexdigest() != self.digest:
            raise invalid(f"blob {self.digest} does not match its digest (or its size, {self.size} bytes)")


def descriptor(value: Any, what: str) -> tuple[str, str, int]:
    """A descriptor's media type, digest and size, checked."""
    if not isinstance(value, dict):
        raise invalid(f"{what} is not a descriptor")
    media, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise invalid(f"{what} has no sha256 digest ({shown(str(digest)[:80])})")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid(f"{what} has no valid size")
    return (media if isinstance(media, str) else ""), digest, size


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise invalid(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise invalid(f"{what} is not a JSON object")
    return document


class Layout:
    """An OCI image layout's files, read as someone else's."""

    def open_file(self, name: str) -> tuple[IO[bytes], int]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def document(self, name: str) -> dict[str, Any]:
        """``index.json`` or ``oci-layout``, size-limited."""
        stream, size = self.open_file(name)
        with stream:
            if size > MAX_DOCUMENT:
                raise invalid(f"{name} is {size} bytes, more than {MAX_DOCUMENT}")
            return parse_json(stream.read(MAX_DOCUMENT + 1), name)

    def blob(self, digest: str, size: int) -> Verified:
        stream, actual = self.open_file("blobs/sha256/" + digest.removeprefix("sha256:"))
        if actual != size:
            stream.close()
            raise invalid(f"blob {digest} is {actual} bytes, its descriptor says {size}")
        return Verified(stream, digest, size)

    def blob_document(self, value: Any, what: str) -> tuple[str, str, dict[str, Any]]:
        """A manifest or config blob: media type, digest and the JSON, verified and size-limited."""
        media, digest, size = descriptor(value, what)
        if size > MAX_DOCUMENT:
            raise invalid(f"the {what} is {size} bytes, more than {MAX_DOCUMENT}")
        blob = self.blob(digest, size)
        try:
            data = blob.read(size)
            blob.finish()
        finally:
            blob.stream.close()
        return media, digest, parse_json(data, what)


class DirectoryLayout(Layout):
    def __init__(self, root: Path) -> None:
        self.root = root

    def open_file(self, name: str) -> tuple[IO[bytes], int]:
        parts = name.split("/")
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"cannot read {shown(str(self.root))}: {exc.strerror}", hint=HINT) from None
        try:
            for part in parts[:-1]:
                following = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = following
            # Looked at before it is opened: opening a device node is an act of its own (a
            # watchdog starts, a tape rewinds, a tty becomes ours), even if nothing is read.
            seen = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(seen.st_mode):
                what = "is a symlink" if stat.S_ISLNK(seen.st_mode) else "is not a regular file"
                raise invalid(f"{name} in {shown(str(self.root))} {what}")
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                              dir_fd=fd)
        except OSError as exc:
            reason = "is a symlink" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
            raise invalid(f"{name} in {shown(str(self.root))}: {reason}") from None
        finally:
            os.close(fd)
        info = os.fstat(file_fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (seen.st_dev, seen.st_ino):
            os.close(file_fd)
            raise invalid(f"{name} in {shown(str(self.root))} is not a regular file (or changed while read)")
        return os.fdopen(file_fd, "rb"), info.st_size


class ArchiveLayout(Layout):
    """An oci-archive: a tar of a layout, read in place (its regular files by name)."""

    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:", tarinfo=Bounded)  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise SandboxError(f"{shown(str(path))} is not an OCI archive (a tar): {exc}", hint=HINT) from None
        self.files: dict[str, tarfile.TarInfo] = {}
        try:
            for count, entry in enumerate(self.tar, 1):
                if count > MAX_ARCHIVE_ENTRIES:
                    raise invalid(f"the archive has more than {MAX_ARCHIVE_ENTRIES} entries")
                if entry.isreg():
                    self.files[os.path.normpath(entry.name.lstrip("/"))] = entry
        except tarfile.TarError as exc:
            self.tar.close()
            raise SandboxError(f"{shown(str(path))} is not a valid tar: {exc}", hint=HINT) from None
        except SandboxError:
            self.tar.close()
            raise

    def open_file(self, name: str) -> tuple[IO[bytes], int]:
        entry = self.files.get(name)
        stream = self.tar.extractfile(entry) if entry is not None else None
        if entry is None or stream is None:
            raise invalid(f"the archive has no file {name}")
        return stream, entry.size

    def close(self) -> None:
        self.tar.close()


def is_transport(source: str) -> bool:
    return source.startswith(TRANSPORTS)


def open_source(source: str, scratch: Path, progress: Any, skopeo_options: tuple[str, ...] = ()) -> Layout:
    """The layout ``source`` names; one skopeo copies into ``scratch`` for a transport (with its
    global ``skopeo_options``: the platform to take of a multi-platform image)."""
    if is_transport(source):
        from sandboxmgr import commands

        layout, big_files = scratch / "skopeo", scratch / "skopeo-tmp"
        big_files.mkdir()
        progress(f"skopeo copy {source}")
        try:
            # --tmpdir: skopeo's own copies (a docker-archive's decompressed tar, a docker-daemon
            # image: the image's size) went to /var/tmp, outside the store's disk and tmp/, and
            # stayed there after a kill.
            commands.run(["skopeo", *skopeo_options, "--tmpdir", str(big_files), "copy", "--quiet", source,
                          f"oci:{layout}:import"], on_line=progress)
        except commands.ProcessExecutionError as exc:
            last = ((exc.stdout or "").strip().splitlines() or ["no output"])[-1]
            said = re.search(r'msg="(.*)"', last)  # logrus's line: level=fatal msg="..."
            raise SandboxError(f"skopeo cannot copy {shown(source)}: {(said.group(1) if said else last)[:300]}",
                               hint=HINT) from None
        return DirectoryLayout(layout)
    path = Path(source)
    if path.is_dir():
        return DirectoryLayout(path)
    if path.is_file():
        return ArchiveLayout(path)
    raise SandboxError(f"{shown(source)}: no such file or directory",
                       hint="give an OCI layout directory, an oci-archive, or a skopeo source "
                            "(docker-archive:FILE, docker://REF)")
