"""The Debian family's shared package cache, which only the host writes and only verified.

``cache/DISTRO-RELEASE-ARCH/apt-archives/KEYRING/`` holds .deb files, flat, under
apt's names, one directory per keyring a profile trusts (what one profile's signed
index vouches for never reaches a profile that trusts other keys). The rules (see
the README's security model):

- Nothing but this module writes it, and nothing a build or a sandbox holds (a name,
  a hard link, an open descriptor) is ever part of it: :meth:`DebCache.keep` reads a
  build's download through one descriptor, hashes it while copying it into a file of
  the cache's own, and renames that file into place only if the SHA256 matched the
  signed index (:mod:`debindex`).
- What leaves it is checked against the index first (:meth:`DebCache.stage`): a
  bootstrap tool, which may write what it is given, gets copies in a directory of
  the build's own; build steps get an overlay whose lower directory holds hard links
  of the inodes just verified (nothing writes through an overlay's lower). A file
  that fails - replaced, planted, a symlink - is deleted from the cache with a
  warning. Sandboxes see the cache itself copy-on-write: it only ever held what was
  verified.

Hashing every cached package for every build would cost a second per 500 MB,
so what was verified is remembered (``index/verified-KEYRING.json``, beside the
saved index, which no sandbox sees) by inode, size, mtime and ctime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from sandboxmgr.builders.debindex import PackageIndex
from sandboxmgr.errors import warn

_CHUNK = 1 << 20
_INCOMING = ".incoming-"  # a package being copied in by keep()
_MEMO_FORMAT = 1


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _stamp(info: os.stat_result) -> list[int]:
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


class Later:
    """A value made in a thread of its own (the signed index, fetched while the bootstrap
    runs); ``result()`` waits for it and raises what making it raised."""

    def __init__(self, make: Callable[[], PackageIndex | None]) -> None:
        self._value: PackageIndex | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = make()
            except BaseException as exc:  # handed to whoever waits
                self._error = exc

        self._thread = threading.Thread(target=run, name="signed-index", daemon=True)
        self._thread.start()

    def result(self) -> PackageIndex | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class DebCache:
    def __init__(self, directory: Path, index: PackageIndex | Later | None, memo: Path,
                 scratch: Path | None = None) -> None:
        self.directory = directory
        self._index = index
        self.memo_path = memo
        self.scratch = scratch  # a directory of this build's own (for view())
        self._memo: dict[str, list[object]] | None = None
        self._view: Path | None = None

    @property
    def index(self) -> PackageIndex | None:
        """The signed index (waited for); None when the mirror answered without one."""
        if isinstance(self._index, Later):
            self._index = self._index.result()
        return self._index


    # -- what was verified already
    def _load_memo(self) -> dict[str, list[object]]:
        if self._memo is None:
            try:
                data = json.loads(self.memo_path.read_text())
                self._memo = dict(data["files"]) if data.get("format") == _MEMO_FORMAT else {}
            except (OSError, ValueError, KeyError, TypeError):
                self._memo = {}
        return self._memo

    def _save_memo(self) -> None:
        if self._memo is None:
            return
        try:
            self.memo_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.memo_path.with_name(f".{self.memo_path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"format": _MEMO_FORMAT, "files": self._memo}))
            os.rename(tmp, self.memo_path)
        except OSError as exc:
            warn(f"cannot save what was verified in the package cache ({exc}); the next build hashes again")

    def _open_verified(self, dir_fd: int, name: str, index: PackageIndex) -> int | None:
        """A descriptor of the cache's regular file ``name`` if it is the package the index
        lists (by the memo, else by its SHA256), positioned at its start; else None."""
        expected = index.expected(name)
        if expected is None:
            return None
        fd = _open_regular(dir_fd, name)
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            if info.st_size != expected[0]:
                os.close(fd)
                return None
            memo = self._load_memo()
            if memo.get(name) == [*_stamp(info), expected[1]]:
                return fd
            if _sha256(fd) != expected[1]:
                os.close(fd)
                return None
            memo[name] = [*_stamp(info), expected[1]]
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
        except BaseException:
            os.close(fd)
            raise

    # -- out of the cache
    def stage(self, target: Path, copy: bool = True) -> int:
        """Put every cached package that matches the index into ``target`` (a directory of
        the build's own): copies for a bootstrap tool, which may write what it is given;
        hard links of the verified inodes for an overlay's lower directory, which nothing
        writes through. Delete what is in the cache but does not belong there. Returns how
        many were staged."""
        staged = 0
        bad: list[str] = []
        cache_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with os.scandir(cache_fd) as entries:
                names = [entry.name for entry in entries]
            for name in [n for n in names if n.startswith(_INCOMING) and not _alive(n)]:
                with contextlib.suppress(OSError):  # what a killed keep() left
                    os.unlink(name, dir_fd=cache_fd)
            names = [n for n in names if not n.startswith(_INCOMING) and n != "partial"]
            index = self.index if names else None  # an empty cache need not wait for the index
            if index is None:
                return 0
            for name in names:
                if not name.endswith(".deb") or not stat.S_ISREG(os.stat(name, dir_fd=cache_fd,
                                                                         follow_symlinks=False).st_mode):
                    bad.append(name)  # nothing but packages belongs here (a symlink would send a tool elsewhere)
                    continue
                if index.expected(name) is None:
                    continue  # another version: kept, verified again when an index lists it
                fd = self._open_verified(cache_fd, name, index)
                if fd is None:
                    bad.append(name)
                    continue
                try:
                    if copy:
                        _copy(fd, target / name)
                    else:
                        # The very inode verified. A dir_fd (ignored for an absolute path) makes
                        # Python call linkat(AT_SYMLINK_FOLLOW), which link(2) is not.
                        os.link(f"/proc/self/fd/{fd}", target / name, src_dir_fd=cache_fd, follow_symlinks=True)
                finally:
                    os.close(fd)
                staged += 1
            for name in bad:
                self._discard(cache_fd, name)
        finally:
            os.close(cache_fd)
            self._save_memo()
        return staged

    def view(self) -> Path | None:
        """The lower directory of a build step's copy-on-write view of the cache: hard links
        of the packages verified for this build (made once); None without a scratch
        directory or an index."""
        if self._view is None and self.scratch is not None and self.index is not None:
            view = self.scratch / "view"
            view.mkdir()
            (view / "partial").mkdir()
            self.stage(view, copy=False)
            self._view = view
        return self._view

    def ready(self) -> None:
        """Wait for the signed index; raises (BuildError) when it does not verify."""
        _ = self.index

    def _discard(self, cache_fd: int, name: str) -> None:
        warn(f"removing {self.directory / name} from the package cache: it is not the package the signed "
             "index lists (replaced, planted, or not a regular file)")
        self._load_memo().pop(name, None)
        try:
            info = os.stat(name, dir_fd=cache_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                from sandboxmgr.removal import remove_tree

                remove_tree(self.directory / name)
            else:
                os.unlink(name, dir_fd=cache_fd)
        except OSError as exc:
            warn(f"cannot remove {self.directory / name}: {exc}")

    # -- into the cache
    def keep(self, source: Path) -> int:
        """Copy the packages in ``source`` (a build's downloads, flat, in a directory the
        build could write) that match the index into the cache. Each is read through one
        descriptor, hashed while it is copied into a file of the cache's own, and that
        file is renamed into place: nothing the build holds (a name, an open descriptor,
        a hard link) is ever part of the cache. Returns how many were kept."""
        index = self.index
        if index is None:
            return 0
        try:
            source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return 0
        kept = 0
        try:
            with os.scandir(source_fd) as entries:
                names = [entry.name for entry in entries if entry.name.endswith(".deb")]
            for name in names:
                expected = index.expected(name)
                if expected is None or self._have(name, expected[1]):
                    continue
                fd = _open_regular(source_fd, name)
                if fd is None:
                    continue  # a symlink, a device node, a FIFO, gone ...: not taken, not even opened
                try:
                    if os.fstat(fd).st_size == expected[0] and self._adopt(fd, name, expected):
                        kept += 1
                finally:
                    os.close(fd)
        finally:
            os.close(source_fd)
            self._save_memo()
        return kept

    def _have(self, name: str, sha256: str) -> bool:
        try:
            info = os.lstat(self.directory / name)
        except OSError:
            return False
        return self._load_memo().get(name) == [*_stamp(info), sha256]

    def _adopt(self, source: int, name: str, expected: tuple[int, str]) -> bool:
        """Copy ``source`` into the cache as ``name`` if what was copied has the expected SHA256."""
        incoming = self.directory / f"{_INCOMING}{os.getpid()}-{os.urandom(6).hex()}"
        out = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            digest = hashlib.sha256()
            while chunk := os.read(source, _CHUNK):
                digest.update(chunk)
                _write_all(out, chunk)
            os.fchmod(out, 0o644)
        finally:
            os.close(out)
        if digest.hexdigest() != expected[1] or os.stat(incoming).st_size != expected[0]:
            incoming.unlink(missing_ok=True)
            return False
        os.rename(incoming, self.directory / name)
        self._load_memo()[name] = [*_stamp(os.lstat(self.directory / name)), expected[1]]
        return True


def _alive(incoming: str) -> bool:
    """Whether the process that is copying ``incoming`` in (``.incoming-PID-RANDOM``) runs."""
    pid = incoming[len(_INCOMING):].partition("-")[0]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _open_regular(dir_fd: int, name: str) -> int | None:
    """A read descriptor of ``name`` if it is a regular file, else None: what is not a
    regular file is never opened (a device node's open alone can act)."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode):
            return None
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)  # swapped in between
        return None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy(source: int, target: Path) -> None:
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        while chunk := os.read(source, _CHUNK):
            _write_all(out, chunk)
    finally:
        os.close(out)
