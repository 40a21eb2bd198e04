"""The Debian family's shared package cache, which only the host writes and only verified.

``cache/DISTRO-RELEASE-ARCH/apt-archives/`` holds .deb files, flat, under apt's
names. The rules (see the README's security model):

- No sandbox and no build step ever writes it: they see it copy-on-write (an
  overlay whose upper directory dies with them), so a planted or replaced file
  never reaches the cache through them.
- A file goes in only from the host, by a rename, after its SHA256 matched the
  signed index (:mod:`debindex`): :meth:`DebCache.keep` takes a build's new
  downloads that way.
- A file comes out to a bootstrap tool only as a hard link in a staging
  directory of the build's own, after it was checked again
  (:meth:`DebCache.stage`); a file that fails (a replaced .deb, a symlink, a
  device) is deleted from the cache with a warning. debootstrap and mmdebstrap
  never see the cache itself.

Hashing every cached package for every build would cost a second per 500 MB,
so what was verified is remembered (``index/verified.json``, beside the saved
index, which no sandbox sees) by inode, size, mtime and ctime: any write to a
file changes its ctime, which only root on the host could set back.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from sandboxmgr.builders.debindex import PackageIndex
from sandboxmgr.store import warn

_CHUNK = 1 << 20
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
    def __init__(self, directory: Path, index: PackageIndex | Later | None, memo: Path) -> None:
        self.directory = directory
        self._index = index
        self.memo_path = memo
        self._memo: dict[str, list[object]] | None = None

    @property
    def index(self) -> PackageIndex | None:
        """The signed index (waited for); None when the mirror answered without one."""
        if isinstance(self._index, Later):
            self._index = self._index.result()
        return self._index

    def ready(self) -> None:
        """Wait for the signed index; raises (BuildError) when it does not verify."""
        _ = self.index

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

    def _matches(self, dir_fd: int, name: str, info: os.stat_result) -> bool:
        """Whether the regular file ``name`` (lstat ``info``) is the package the index lists."""
        assert self.index is not None
        expected = self.index.expected(name)
        if expected is None or info.st_size != expected[0]:
            return False
        memo = self._load_memo()
        if memo.get(name) == [*_stamp(info), expected[1]]:
            return True
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            opened = os.fstat(fd)
            if (opened.st_ino, opened.st_dev) != (info.st_ino, info.st_dev):
                return False  # replaced between lstat and open
            good = _sha256(fd) == expected[1]
        finally:
            os.close(fd)
        if good:
            memo[name] = [*_stamp(info), expected[1]]
        return good

    # -- out of the cache
    def stage(self, target: Path) -> int:
        """Hard-link every cached package that matches the index into ``target`` (a
        directory of the build's own); delete what is in the cache but does not belong
        there. Returns how many were staged."""
        staged = 0
        bad: list[str] = []
        cache_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with os.scandir(cache_fd) as entries:
                names = [entry.name for entry in entries]
            index = self.index if set(names) - {"partial"} else None  # an empty cache need not wait
            if index is None:
                return 0
            for name in names:
                info = os.stat(name, dir_fd=cache_fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) and name == "partial":
                    continue
                if not name.endswith(".deb") or not stat.S_ISREG(info.st_mode):
                    # Nothing but packages belongs here (a symlink would send a host tool elsewhere).
                    bad.append(name)
                    continue
                expected = index.expected(name)
                if expected is None:
                    continue  # another version: kept, verified again when an index lists it
                if not self._matches(cache_fd, name, info):
                    bad.append(name)
                    continue
                os.link(name, target / name, src_dir_fd=cache_fd, follow_symlinks=False)
                staged += 1
            for name in bad:
                self._discard(cache_fd, name)
        finally:
            os.close(cache_fd)
            self._save_memo()
        return staged

    def _discard(self, cache_fd: int, name: str) -> None:
        warn(f"removing {self.directory / name} from the package cache: it is not the package the signed "
             "index lists (replaced, planted, or not a regular file)")
        self._load_memo().pop(name, None)
        try:
            info = os.stat(name, dir_fd=cache_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                from sandboxmgr.store import remove_tree

                remove_tree(self.directory / name)
            else:
                os.unlink(name, dir_fd=cache_fd)
        except OSError as exc:
            warn(f"cannot remove {self.directory / name}: {exc}")

    # -- into the cache
    def keep(self, source: Path) -> int:
        """Move the packages in ``source`` (a build's downloads, flat) that match the
        index into the cache, each by a rename; the rest stays where it is. Returns
        how many were kept."""
        kept = 0
        try:
            source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return 0
        index = self.index
        if index is None:
            os.close(source_fd)
            return 0
        try:
            with os.scandir(source_fd) as entries:
                names = [entry.name for entry in entries if entry.name.endswith(".deb")]
            for name in names:
                info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                    continue  # a link to the cache's own file (staged), or something odd: not taken
                if not self._matches(source_fd, name, info):
                    continue
                try:
                    # Made inside: ours and read-only for the rest, whatever the build set.
                    if os.geteuid() == 0:
                        os.chown(name, 0, 0, dir_fd=source_fd, follow_symlinks=False)
                    os.chmod(name, 0o644, dir_fd=source_fd)
                    os.rename(name, self.directory / name, src_dir_fd=source_fd)
                    moved = os.lstat(self.directory / name)  # a rename changes the ctime
                except OSError:
                    continue  # another filesystem, say: the cache simply does not get it
                self._load_memo()[name] = [*_stamp(moved), index.packages[name][1]]
                kept += 1
        finally:
            os.close(source_fd)
            self._save_memo()
        return kept
