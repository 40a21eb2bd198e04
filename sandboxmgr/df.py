"""``sandboxmgr df``: what the store takes on disk, by kind, and what prune would free.

One row per kind of thing the store holds - images, layers, sandboxes, package caches, kept
bootstrap roots, run caches, logs, temporary trees - each with how many there are, how many are in use,
their size (each file once, usage.py) and what is reclaimable: what ``prune`` (images, layers)
and ``prune --cache`` (package caches, kept roots, run caches) would free, with hard links counted
(removing an older image whose root is kept frees only what the kept root does not hold).
Images and layers are the same bytes seen twice: the images' size is the part of the
layers' that images use. The total counts every file once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxmgr import catalog, pkgcache, rootcache, usage
from sandboxmgr.locks import is_held, is_locked

if TYPE_CHECKING:
    from sandboxmgr.profile import ProfileRegistry
    from sandboxmgr.store import Store


@dataclass
class Kind:
    """One row: each item of one kind with its trees, whether it is in use, and the trees that
    removing it would free (none: not reclaimable)."""

    name: str
    files_only: bool = False  # reclaiming keeps the directories (package caches)
    items: list[dict[str, Any]] = field(default_factory=list)
    trees: list[list[Path]] = field(default_factory=list)
    active: list[bool] = field(default_factory=list)
    doomed: list[Path] = field(default_factory=list)

    def add(self, item: dict[str, Any], trees: list[Path], active: bool, doomed: list[Path]) -> None:
        self.items.append(item)
        self.trees.append(trees)
        self.active.append(active)
        self.doomed += doomed

    def paths(self) -> list[Path]:
        return [path for paths in self.trees for path in paths]

    def row(self, measured: usage.Trees, verbose: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"type": self.name, "total": len(self.items), "active": sum(self.active),
                               "size": usage.size(measured.union(self.paths())),
                               "reclaimable": usage.freed(measured.union(self.doomed), self.files_only)}
        if verbose:
            for item, paths in zip(self.items, self.trees, strict=True):
                item["size"] = usage.size(measured.union(paths))
            row["items"] = self.items
        return row


def report(store: Store, registry: ProfileRegistry, verbose: bool = False) -> dict[str, Any]:
    """The rows of ``sandboxmgr df`` (and its --json), with each item's with ``verbose``."""
    measured = usage.Trees()
    kinds = [*_images_and_layers(store, registry, measured, verbose), _sandboxes(store), _caches(store),
             _kept_roots(store), _run_caches(store), _logs(store), _temporary(store)]
    rows = [kind.row(measured, verbose) for kind in kinds]
    everything = measured.union(path for kind in kinds for path in kind.paths())
    # What prune --cache frees in all: a file that an older layer and a kept root both link
    # goes only with both, so it is in no row's reclaimable but in this.
    whole = measured.union(path for kind in kinds if not kind.files_only for path in kind.doomed)
    emptied = sum(row["reclaimable"] for kind, row in zip(kinds, rows, strict=True) if kind.files_only)
    return {"store": str(store.root), "types": rows, "size": usage.size(everything),
            "reclaimable": usage.freed(whole) + emptied}


def _images_and_layers(store: Store, registry: ProfileRegistry, measured: usage.Trees,
                       verbose: bool) -> list[Kind]:
    records = store.images()
    current = catalog.current(records, registry)
    images, layers = Kind("images"), Kind("layers")
    users: dict[str, list[str]] = {}
    for sandbox in store.sandboxes():
        users.setdefault(str(sandbox.meta.get("image")), []).append(sandbox.name)
    in_use = {r.key: r.key in users or is_held(store.lock("image", r.key).path) for r in records}
    # prune removes the images other than their profile's current one that no sandbox uses
    older = {r.key for r in records if r.key != current[r.profile] and not in_use[r.key]}
    kept_layers = {key for r in records if r.key not in older for key in r.layers}
    shares = usage.shares({r.key: [store.layers_dir / k for k in r.layers] for r in records}, measured) \
        if verbose else {}
    for record in records:
        paths = [store.layers_dir / key for key in record.layers]
        shared, unique = shares.get(record.key, (None, None))
        item = {"key": record.key, "profile": record.profile, "outdated": record.key != current[record.profile],
                "sandboxes": users.get(record.key, []), "shared_size": shared, "unique_size": unique}
        # What prune frees of an older image: its layers that no image it keeps uses.
        doomed = [p for p in paths if p.name not in kept_layers] if record.key in older else []
        images.add(item, paths, in_use[record.key], doomed)
    used = {key for record in records for key in record.layers}
    for layer in store.layers():
        item = {"key": layer.key, "label": layer.meta.get("label"),
                "images": sorted(r.profile for r in records if layer.key in r.layers)}
        layers.add(item, [layer.path], layer.key in used, [] if layer.key in used else [layer.path])
    return [images, layers]


def _sandboxes(store: Store) -> Kind:
    kind = Kind("sandboxes")
    for record in store.sandboxes():
        running = is_locked(store.lock("live", record.name).path)
        item = {"name": record.name, "profile": record.meta.get("profile"), "image": record.meta.get("image"),
                "state": "running" if running else "stopped"}
        kind.add(item, [record.path], running, [])  # removed by 'rm NAME' only
    return kind


def _caches(store: Store) -> Kind:
    kind = Kind("package caches", files_only=True)
    for cache in pkgcache.caches(store):
        busy = pkgcache.in_use(store, cache)
        parts = pkgcache.contents(cache)
        kind.add({"name": cache.name, "path": str(cache), "in_use": busy}, parts, busy, [] if busy else parts)
    return kind


def _kept_roots(store: Store) -> Kind:
    kind = Kind("kept roots")
    for place, meta in rootcache.kept_roots(store):
        busy = is_locked(store.lock("layer", place.name).path)  # its layer is being built
        item = {"layer": place.name, "cache": place.parent.parent.name, "kept": meta.get("kept")}
        kind.add(item, [place], busy, [] if busy else [place])
    return kind


def _run_caches(store: Store) -> Kind:
    kind = Kind("run caches")
    for entry in pkgcache.run_caches(store):
        kind.add({"name": f"{entry.parent.name}/{entry.name}"}, [entry], False, [entry])
    return kind


def _logs(store: Store) -> Kind:
    """Build logs, and each matrix run's directory of logs: left for you (prune keeps them)."""
    kind = Kind("logs")
    if store.logs_dir.is_dir():
        for entry in sorted(store.logs_dir.iterdir()):
            runs = sorted(entry.iterdir()) if entry.is_dir() and not entry.is_symlink() else [entry]
            for log in runs:
                kind.add({"name": str(log.relative_to(store.logs_dir))}, [log], False, [])
    return kind


def _temporary(store: Store) -> Kind:
    kind = Kind("temporary")
    if store.tmp_dir.is_dir():
        for entry in sorted(store.tmp_dir.iterdir()):
            running = is_locked(store.lock("tmp", entry.name).path)
            # A leftover (its process died) goes with the next build, or doctor --fix.
            kind.add({"name": entry.name, "leftover": not running}, [entry], running, [])
    return kind
