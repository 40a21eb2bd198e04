"""Locks: flock(2) on files in the store's locks/ directory.

Every lock file is named by :func:`lock_file` (and read back by :func:`parse_lock_file`):
``image-KEY``, ``layer-KEY``, ``sandbox-NAME``, ``tmp-ID``, ``cache-DISTRO-RELEASE-ARCH``,
each with ``.lock``. A build holds its image's and layers' locks, a command in a named
sandbox holds the sandbox's exclusively, a running sandbox holds its image's shared, builds
and running sandboxes hold their package cache's shared (``prune --cache`` takes it
exclusively, see pkgcache.py), and every ``tmp/`` entry is locked by the process making
it, so a tmp entry whose lock is free is a leftover.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Collection
from contextlib import suppress

from sandboxmgr.errors import BusyError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path

SUFFIX = ".lock"


def lock_file(locks_dir: Path, kind: str, name: str) -> Path:
    """The lock file of the ``kind`` (image, layer, sandbox, tmp) named ``name``."""
    return locks_dir / lock_name(kind, name)


def lock_name(kind: str, name: str) -> str:
    """The file name of :func:`lock_file`: the one place that spells a lock file's name."""
    return f"{kind}-{name}{SUFFIX}"


def parse_lock_file(file_name: str) -> tuple[str, str] | None:
    """(kind, name) of a lock file's name (the inverse of :func:`lock_file`), or None when it is
    not one."""
    if not file_name.endswith(SUFFIX):
        return None
    kind, dash, rest = file_name.partition("-")
    if not dash:
        return None
    return kind, rest[: -len(SUFFIX)]


class Lock:
    """An flock(2) on a file in the store's locks/ directory.

    An exclusive holder writes its pid into the file (for "held by pid N") and
    empties it on release. Lock files are removed with what they guard (``rm``
    deletes a sandbox's), so a lock taken on a file that was unlinked or replaced
    meanwhile is taken again on the file now at the path (see :func:`_flock`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.exclusive = False

    def try_acquire(self) -> bool:
        fd = take(self.path, exclusive=True, wait=False)
        if fd is None:
            return False
        self.fd, self.exclusive = fd, True
        return True

    def acquire(self, wait: bool, busy_message: str, hint: str) -> None:
        if self.try_acquire():
            return
        if not wait:
            raise BusyError(busy_message + self.holder_text(), hint=hint)
        fd = take(self.path, exclusive=True)
        assert fd is not None  # a blocking flock returns only when it holds the lock
        self.fd, self.exclusive = fd, True

    def acquire_shared(self) -> None:
        """A shared hold (several at once), blocking only while someone holds it exclusively."""
        fd = take(self.path, exclusive=False)
        assert fd is not None
        self.fd, self.exclusive = fd, False

    def holder_text(self) -> str:
        """" (held by pid N)" while an exclusive holder that is alive wrote its pid, else ""."""
        try:
            with open(self.path) as held:
                pid = held.read().strip()
        except OSError:
            return ""
        return f" (held by pid {pid})" if pid.isdigit() and os.path.exists(f"/proc/{pid}") else ""

    def release(self) -> None:
        if self.fd is not None:
            let_go(self.fd, self.exclusive)
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take(path: str | Path, exclusive: bool, wait: bool = True) -> int | None:
    """A descriptor holding the lock file at ``path``, exclusively (its pid written in, for
    "held by pid N") or shared; with ``wait=False``, None when someone else holds it. What
    :class:`Lock` does, for a caller that has the path as text (ticket.py)."""
    fd = _flock(path, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    if fd is None:
        return None
    if exclusive:
        with suppress(OSError):  # only for "held by pid N": a full disk must not fail the lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def let_go(fd: int, exclusive: bool) -> None:
    """Let go of what :func:`take` gave."""
    if exclusive:
        with suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for the next one who waits
    os.close(fd)


def _flock(path: str | Path, operation: int) -> int | None:
    """A descriptor of the lock file at ``path`` with ``operation`` (flock) held, or None
    when LOCK_NB and someone else holds it. If the file was unlinked or replaced while we
    waited (rm deletes a sandbox's lock after releasing it), a lock on it would exclude
    no one: lock the file now at the path instead."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def lock_files(locks_dir: Path, kinds: Collection[str]) -> list[tuple[str, str]]:
    """(kind, name) of every lock file of one of ``kinds`` in ``locks_dir``, by file name."""
    try:
        file_names = sorted(os.listdir(locks_dir))
    except FileNotFoundError:
        return []
    parsed = [parse_lock_file(file_name) for file_name in file_names]
    return [found for found in parsed if found is not None and found[0] in kinds]


def remove_stale_locks(locks_dir: Path, homes: dict[str, str]) -> None:
    """Remove the lock files of the kinds in ``homes`` (kind -> the directory of what they
    guard) whose tree is gone: a kill between removing a tree and its lock leaves them.
    Image and layer locks stay with their image or layer."""
    for kind, ident in lock_files(locks_dir, homes):
        if not ident.strip("."):
            continue
        home = f"{homes[kind]}/{ident}"
        if os.path.lexists(home):
            continue
        lock = Lock(lock_file(locks_dir, kind, ident))
        if not lock.try_acquire():
            continue  # in use: a tree being made, a command waiting for a sandbox
        try:
            if not os.path.lexists(home):  # not made meanwhile
                lock.path.unlink(missing_ok=True)
        finally:
            lock.release()


def _probe(path: str | Path, mode: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_locked(path: str | Path) -> bool:
    """Whether someone holds the lock exclusively (a build, a command in a named sandbox)."""
    return _probe(path, fcntl.LOCK_SH)


def is_held(path: Path) -> bool:
    """Whether anyone holds the lock at all, shared (a running sandbox) or exclusive."""
    return _probe(path, fcntl.LOCK_EX)
