"""Kept bootstrap roots: a rebuild against an unchanged mirror skips the bootstrap.

A bootstrap spends its time installing a hundred packages, not downloading
them: with every .deb in the package cache, mmdebstrap still takes 13 s of a
14 s minbase build here. But what a bootstrap makes is decided by three things:
the bootstrap layer's inputs (its key: distro, release, arch, mirror, variant,
include, keyring), the package index the mirror serves, and the bootstrap tool.
So after a bootstrap the finished root is kept, hard-linked, in
``STORE/cache/DISTRO-RELEASE-ARCH/roots/LAYER-KEY/``, with a digest of the index
and the tool's version. A later build of the same layer - after ``rmi``, or
with ``build --rebuild`` - fetches the index's signed summary (Debian's
InRelease, about 150 kB; each RPM repository's repomd.xml) and, when the digest
and the tool are unchanged, links the kept root in instead of bootstrapping:
the mirror would have given exactly the packages it holds. mkosi's incremental
cache and mock's root cache do the same, keyed on the configuration alone; this
one also notices a mirror that moved on.

Hard links cost no space while the layer exists. Neither copy can change the
other: nothing writes a layer's files in place (an image's layers are read-only
overlay lowers), and a kept root is only ever linked from. ``build --no-cache``
bootstraps afresh; ``prune --cache`` deletes the kept roots.

A profile whose index cannot be fingerprinted - extra bootstrap arguments, an
RPM repository reached through a metalink or mirrorlist, a mirror that answers
without the index - is simply built as before. When the network does not reach
the mirror at all and the bootstrap then fails too, a kept root of the layer is
used, with a warning (images.py): offline, it is the best there is.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from sandboxmgr import commands
from sandboxmgr.builders.index import digest
from sandboxmgr.locks import Lock
from sandboxmgr.removal import remove_tree
from sandboxmgr.store import Store, now_iso

FORMAT = 1
# Kept roots per distro/release/arch (variants, include lists); the least recently used go first.
KEEP_PER_RELEASE = 3


def fingerprint(state: str | None) -> str | None:
    """A builder's index state (see Builder.index_state, which images.py asks) with
    sandboxmgr's version (how it bootstraps may change with it), or None when the index
    cannot be fingerprinted."""
    from sandboxmgr import __version__

    return None if state is None else digest([f"sandboxmgr {__version__}", state])


def roots_dir(store: Store, cache_key: str) -> Path:
    return store.cache_dir / cache_key / "roots"


def find(store: Store, cache_key: str, layer_key: str, state: str | None) -> Path | None:
    """The kept root of ``layer_key`` if it was made from the same index and tool (or,
    with ``state`` None, from whatever index: the offline case)."""
    place = roots_dir(store, cache_key) / layer_key
    try:
        meta = json.loads((place / "root.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if state is not None and meta.get("state") != state:
        return None
    diff = place / "diff"
    if not diff.is_dir() or diff.is_symlink():
        return None
    with suppress(OSError):
        os.utime(place / "root.json")  # used now: the last to go when roots are trimmed
    return diff


def kept_at(diff: Path) -> str:
    """When the root of a kept ``diff`` was kept (UTC, ISO 8601), or "?"."""
    try:
        return str(json.loads((diff.parent / "root.json").read_text()).get("kept", "?"))
    except (OSError, ValueError, AttributeError):
        return "?"


def is_kept(store: Store, layer_key: str) -> bool:
    """Whether a root of ``layer_key`` is kept (for any distro/release/arch)."""
    return any(store.cache_dir.glob(f"*/roots/{layer_key}/root.json"))


def link_tree(source: Path, target: Path) -> None:
    """``target`` (not existing yet) as a tree of hard links to ``source``'s files;
    directories are new, with the same owner, mode, times and extended attributes."""
    result = commands.capture(["cp", "-a", "--link", "--no-target-directory", "--", str(source), str(target)])
    if result is None:
        raise OSError(f"cp --link {source} {target}: cannot run cp")
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        reason = said[-1:] or [f"exit status {result.returncode}"]
        raise OSError(f"cp --link {source} {target}: {reason[0]}")


def keep(store: Store, cache_key: str, layer_key: str, state: str, diff: Path) -> None:
    """Keep a finished bootstrap root (before it is published), replacing an older one."""
    place = roots_dir(store, cache_key) / layer_key
    place.parent.mkdir(parents=True, exist_ok=True)
    with store.temporary(f"keep-{layer_key}") as tmp:
        kept = tmp / "kept"
        kept.mkdir()
        link_tree(diff, kept / "diff")
        meta = {"format": FORMAT, "layer": layer_key, "state": state, "kept": now_iso()}
        (kept / "root.json").write_text(json.dumps(meta, indent=2) + "\n")
        if place.exists():
            os.rename(place, tmp / "old")  # removed with tmp
        os.rename(kept, place)
    trim(store, cache_key, keep_also=layer_key)


def trim(store: Store, cache_key: str, keep_also: str) -> list[Path]:
    """Remove the least recently used kept roots of one distro/release/arch beyond
    KEEP_PER_RELEASE (never ``keep_also``, nor one whose layer is being built)."""
    roots = roots_dir(store, cache_key)
    places = [p for p in roots.iterdir() if p.name != keep_also] if roots.is_dir() else []

    def last_used(place: Path) -> float:
        try:
            return (place / "root.json").stat().st_mtime
        except OSError:
            return 0.0

    places.sort(key=last_used, reverse=True)
    removed, _busy = _remove(store, places[KEEP_PER_RELEASE - 1:])
    return removed


def kept_roots(store: Store) -> list[tuple[Path, dict[str, Any]]]:
    """Every kept root with its metadata (unreadable metadata: an empty dict)."""
    found: list[tuple[Path, dict[str, Any]]] = []
    if not store.cache_dir.is_dir():
        return found
    for cache in sorted(store.cache_dir.iterdir()):
        roots = cache / "roots"
        if not roots.is_dir() or roots.is_symlink():
            continue
        for place in sorted(roots.iterdir()):
            try:
                meta = json.loads((place / "root.json").read_text())
            except (OSError, ValueError):
                meta = {}
            found.append((place, meta if isinstance(meta, dict) else {}))
    return found


def remove_all(store: Store) -> tuple[list[Path], list[Path]]:
    """Delete the kept roots; a root whose layer is being built right now is left.
    Returns (removed, busy)."""
    return _remove(store, [place for place, _meta in kept_roots(store)])


def _remove(store: Store, places: list[Path]) -> tuple[list[Path], list[Path]]:
    removed: list[Path] = []
    busy: list[Path] = []
    for place in places:
        lock: Lock = store.lock("layer", place.name)
        if not lock.try_acquire():
            busy.append(place)
            continue
        try:
            (place / "root.json").unlink(missing_ok=True)  # first: without it, find() ignores the rest
            remove_tree(place)
            removed.append(place)
        finally:
            lock.release()
    return removed, busy
