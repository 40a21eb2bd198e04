"""The package caches, as a whole: which there are, who uses one, and emptying them; and the
run caches (compiled seccomp filters, resolved profiles), which ``prune --cache`` empties too.

``STORE/cache/DISTRO-RELEASE-ARCH/`` holds what builds download (the Debian family's
``apt-archives/KEYRING/`` and its saved signed ``index/``, the RPM family's ``dnf/``) and
the kept bootstrap roots (``roots/``, rootcache.py's). What goes in is the families'
business (builders/debcache.py, families/); this module only sees directories.

A cache is in use while a build of its distro/release/arch runs (it reads and fills it)
and while a sandbox runs that mounts it (copy-on-write: the cache is the overlay's lower
directory, which must not change under it). Both hold the cache's lock shared
(``cache-DISTRO-RELEASE-ARCH``, see images.py and sandbox.py); ``prune --cache`` takes it
exclusively without waiting, and leaves a cache it cannot take. Emptying deletes the files
and keeps the directories: a named sandbox's saved settings, and the cached resolution of
``run`` (runcache.py), mount them by path.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from sandboxmgr import usage
from sandboxmgr.removal import empty_tree, remove_tree

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sandboxmgr.store import Store

ROOTS = "roots"  # rootcache.py's, removed under the lock of each root's layer


def caches(store: Store) -> list[Path]:
    """Every package cache directory (DISTRO-RELEASE-ARCH: never without a dash, unlike the
    store's own ``seccomp/``)."""
    if not store.cache_dir.is_dir():
        return []
    return [entry for entry in sorted(store.cache_dir.iterdir())
            if "-" in entry.name and entry.is_dir() and not entry.is_symlink()]


def contents(cache: Path) -> list[Path]:
    """What ``prune --cache`` empties in a cache: everything but the kept roots."""
    return [entry for entry in sorted(cache.iterdir()) if entry.name != ROOTS]


def in_use(store: Store, cache: Path) -> bool:
    """Whether a build or a running sandbox holds the cache now."""
    from sandboxmgr.locks import is_held

    return is_held(store.lock("cache", cache.name).path)


@contextmanager
def using(store: Store, name: str) -> Iterator[None]:
    """Hold the cache ``name`` (DISTRO-RELEASE-ARCH) shared, as a build does: several builds
    and sandboxes at once, while no ``prune --cache`` empties it (waiting for one that does)."""
    lock = store.lock("cache", name)
    lock.acquire_shared()
    try:
        yield
    finally:
        lock.release()


def run_caches(store: Store) -> list[Path]:
    """What runs keep to start faster: compiled seccomp filters (``cache/seccomp/``, libseccomp.py)
    and resolved profiles (``refs/``, runcache.py). Either is made again when missing; files a
    process is still writing (named with a leading dot, or ``.tmp``) are not listed."""
    found = []
    for directory, suffix in ((store.cache_dir / "seccomp", ".bpf"), (store.refs_dir, ".json")):
        if directory.is_dir() and not directory.is_symlink():
            found += [entry for entry in sorted(directory.iterdir())
                      if entry.name.endswith(suffix) and not entry.name.startswith(".")]
    return found


def empty_run_caches(store: Store) -> tuple[int, int]:
    """Remove the run caches' files: (how many, bytes freed)."""
    files = run_caches(store)
    freed = usage.freed(usage.merged(usage.scan(entry) for entry in files))
    for entry in files:
        remove_tree(entry)
    return len(files), freed


def empty_all(store: Store) -> tuple[list[tuple[Path, int]], list[Path]]:
    """Empty every package cache that no one uses: ([(cache, bytes freed)], [busy caches])."""
    emptied: list[tuple[Path, int]] = []
    busy: list[Path] = []
    for cache in caches(store):
        lock = store.lock("cache", cache.name)
        if not lock.try_acquire():
            busy.append(cache)
            continue
        with lock:
            parts = contents(cache)
            trees = usage.merged(usage.scan(part) for part in parts if part.is_dir() and not part.is_symlink())
            for part in parts:
                if part.is_dir() and not part.is_symlink():
                    empty_tree(part)
                else:
                    remove_tree(part)
            emptied.append((cache, usage.freed(trees, files_only=True)))
    return emptied, busy
