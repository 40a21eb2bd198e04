"""Deleting (never through a mount) and measuring the trees of the store.

A tree in the store may hold anything a sandbox made (symlinks to the host's /,
a directory a crashed build left mounted): the walks here never follow a
symlink, and removal goes by directory descriptors and refuses to cross into
another file system.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from sandboxmgr import linux, mountinfo
from sandboxmgr.errors import UnsafeRemovalError


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything below it, never through a mount.

    Anything mounted at or under the tree (a bind mount that a crash left, a
    mount of a killed build) is first unmounted with a detached unmount, which
    removes the mount without touching what it shows. If something is still
    mounted after that, nothing is deleted. The walk itself never follows a
    symlink and never enters a directory on another device.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    _remove_below(path, info.st_dev, keep_dirs=False)
    os.rmdir(path)


def empty_tree(path: Path) -> None:
    """Delete every file below ``path`` and keep its directories (a package cache, whose
    directories sandboxes mount), with :func:`remove_tree`'s care for mounts and symlinks
    (a symlink is a file here: it goes, what it names stays)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        _remove_below(path, info.st_dev, keep_dirs=True)


def _remove_below(path: Path, device: int, keep_dirs: bool) -> None:
    detach_mounts([path])
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _remove_contents(top, device, str(path), keep_dirs)
    finally:
        os.close(top)


def detach_mounts(paths: Iterable[Path]) -> None:
    """Unmount (detached) anything mounted at or under each of ``paths``; if something is
    still mounted after that, refuse (UnsafeRemovalError) before anything is deleted.

    The store calls it before it moves a tree out of its place to delete it: a refusal
    then leaves the sandbox or image where it was, for the `rm`/`rmi` the hint suggests.
    """
    for path in paths:
        for point in mountinfo.mounts_under(path):
            with suppress(OSError):
                linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
        left = mountinfo.mounts_under(path)
        if left:
            raise UnsafeRemovalError(
                f"refusing to delete {path}: {left[0]} is still mounted inside it",
                hint=f"unmount it (umount -l {left[0]}) and try again; nothing was deleted",
            )


DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _clear_files(dir_fd: int, device: int, where: str) -> list[str]:
    """Unlink the files of ``dir_fd`` (symlinks included); its directories' names, checked to be
    on ``device``."""
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    directories = []
    for name in names:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            continue
        if info.st_dev != device:
            raise UnsafeRemovalError(
                f"refusing to delete {where}/{name}: it is on another filesystem",
                hint="something is mounted there; unmount it and try again",
            )
        directories.append(name)
    return directories


def _remove_contents(top_fd: int, device: int, where: str, keep_dirs: bool = False) -> None:
    """Empty the tree of ``top_fd`` without a recursion and with one descriptor open at a time:
    a sandbox can write a tree thousands of directories deep (Python's recursion stops at
    1000, the descriptors at 1024). Up is "..", checked to be the directory come down from."""
    fd = os.dup(top_fd)
    # Per level below the top: the parent's (st_dev, st_ino), its directories still to do, this name.
    stack: list[tuple[tuple[int, int], list[str], str]] = []
    try:
        pending = _clear_files(fd, device, where)
        while True:
            if pending:
                name = pending.pop()
                child = os.open(name, DIRECTORY, dir_fd=fd)
                info = os.fstat(fd)
                stack.append(((info.st_dev, info.st_ino), pending, name))
                os.close(fd)
                fd, where = child, f"{where}/{name}"
                pending = _clear_files(fd, device, where)
                continue
            if not stack:
                return
            identity, pending, name = stack.pop()
            parent = os.open("..", DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, where = parent, where.rpartition("/")[0]
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != identity:
                raise UnsafeRemovalError(f"refusing to go on deleting {where}: {name} was moved meanwhile",
                                         hint="nothing outside it was deleted; try again")
            if not keep_dirs:
                os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    """Bytes used by the files of a tree (hard links counted once), like du."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
    return total
