"""Disk usage: what the store's trees take, each file once, and what removing some would free.

A file reachable by several names (the hard links of a kept bootstrap root and its layer,
a layer shared by two images) takes its space once: files are counted by (st_dev, st_ino).
Removing a tree frees a file only when every one of its names is in what is removed
(st_nlink), so an older image whose bootstrap root is kept frees little until the root goes.

The trees may hold anything a sandbox made: the walk never follows a symlink (every
directory is opened with O_NOFOLLOW relative to its parent's descriptor, so a directory
swapped for a symlink meanwhile is not entered) and never enters another file system (a
mount point, a bind mount a crash left).
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from sandboxmgr import mountinfo

Inode = tuple[int, int]
# Per inode: [bytes, links it has (0 for a directory: it has no other name), names seen].
Inodes = dict[Inode, list[int]]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _entries(fd: int) -> list[tuple[str, os.stat_result]]:
    found = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    found.append((entry.name, entry.stat(follow_symlinks=False)))
                except OSError:
                    continue  # gone meanwhile
    except OSError:
        pass
    return found


def _stats(top: Path) -> Iterator[os.stat_result]:
    """The lstat of everything below ``top`` on ``top``'s file system, depth first: neither a
    mount point of another file system nor a bind mount (same device, so found by its path in
    the mount table) is entered or counted."""
    try:
        fd = os.open(top, _DIR_FLAGS)
    except OSError:
        return
    device = os.fstat(fd).st_dev
    real = os.path.realpath(top)
    mounts = set(mountinfo.mounts_under(real)) - {real}
    stack = [(fd, iter(_entries(fd)), real)]
    try:
        while stack:
            fd, pending, where = stack[-1]
            for name, info in pending:
                if info.st_dev != device or (mounts and f"{where}/{name}" in mounts):
                    continue  # a mount point: not the store's tree
                yield info
                if not stat.S_ISDIR(info.st_mode):
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for a symlink, gone, or out of descriptors: not entered
                opened = os.fstat(child)
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    os.close(child)  # swapped meanwhile
                    continue
                stack.append((child, iter(_entries(child)), f"{where}/{name}"))
                break
            else:
                os.close(fd)
                stack.pop()
    finally:
        for fd, _pending, _where in stack:
            os.close(fd)


def scan(top: Path) -> Inodes:
    """Every inode of the tree at ``top`` (a directory, a file) with its bytes on disk, its link
    count and how many of its names are in the tree."""
    inodes: Inodes = {}
    try:
        first = [os.lstat(top)]
    except OSError:
        return inodes
    for info in itertools.chain(first, _stats(top) if stat.S_ISDIR(first[0].st_mode) else ()):
        key = (info.st_dev, info.st_ino)
        seen = inodes.get(key)
        if seen is not None:
            seen[2] += 1
            continue
        links = 0 if stat.S_ISDIR(info.st_mode) else info.st_nlink
        inodes[key] = [info.st_blocks * 512, links, 1]
    return inodes


def merged(trees: Iterable[Inodes]) -> Inodes:
    """The inodes of several trees (measured apart), with the names seen in all of them."""
    total: Inodes = {}
    for tree in trees:
        for key, (size, links, seen) in tree.items():
            known = total.get(key)
            if known is None:
                total[key] = [size, links, seen]
            else:
                known[2] += seen
    return total


def size(inodes: Inodes) -> int:
    """Bytes on disk, each inode once."""
    return sum(entry[0] for entry in inodes.values())


def freed(inodes: Inodes, files_only: bool = False) -> int:
    """The bytes that removing the trees of ``inodes`` (merged) frees: the inodes every name of
    which is among them (``files_only``: their directories stay)."""
    return sum(entry[0] for entry in inodes.values()
               if entry[2] >= entry[1] and not (files_only and entry[1] == 0))


class Trees:
    """Trees measured once each, by path: a layer shared by several images is walked once."""

    def __init__(self) -> None:
        self._measured: dict[Path, Inodes] = {}

    def of(self, path: Path) -> Inodes:
        found = self._measured.get(path)
        if found is None:
            found = self._measured[path] = scan(path)
        return found

    def union(self, paths: Iterable[Path]) -> Inodes:
        return merged(self.of(path) for path in dict.fromkeys(paths))


def shares(groups: dict[str, list[Path]], trees: Trees) -> dict[str, tuple[int, int]]:
    """For each group of trees (an image's layers), (shared, unique): the bytes of the files
    it has in common with another group, and of the files no other group has."""
    unions = {name: trees.union(paths) for name, paths in groups.items()}
    holders: dict[Inode, int] = {}
    for inodes in unions.values():
        for key in inodes:
            holders[key] = holders.get(key, 0) + 1
    result = {}
    for name, inodes in unions.items():
        shared = sum(entry[0] for key, entry in inodes.items() if holders[key] > 1)
        result[name] = (shared, size(inodes) - shared)
    return result
