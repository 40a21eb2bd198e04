"""The store: images, sandboxes, temporary trees and locks on disk.

Layout::

    STORE/layers/KEY/diff          a layer: a full root (bootstrap) or an overlayfs upper dir
    STORE/layers/KEY/layer.json    its metadata; a layer without it does not exist
    STORE/images/KEY/image.json    an image: a profile's stack of layers, bottom first
    STORE/cache/                   package caches shared by builds and sandboxes
    STORE/sandboxes/NAME/          a named sandbox: upper/, work/, root/, sandbox.json
    STORE/tmp/ID/                  builds and ephemeral sandboxes in progress
    STORE/locks/*.lock             flock(2) locks: image-KEY, sandbox-NAME, tmp-ID
    STORE/logs/                    build logs
    STORE/refs/                    resolved profiles (the fast path of run)
    STORE/trusted.json             project files the user trusts (sandboxmgr trust)

The store's root and every top directory are root's alone (0700, see
locations.py): :meth:`Store.ensure` makes them so; ``doctor`` reports a looser one.

Everything is created in ``tmp/`` and renamed into place when complete, so a
crash never leaves a half-made image or sandbox that looks finished. A tmp
entry whose lock nobody holds is a leftover of a dead process and is removed
by the next command. Removal goes through :func:`removal.remove_tree`, which
never deletes through a mount; locks are locks.py's.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sandboxmgr.errors import BusyError, NotFoundError, SandboxError, out_of_space, shown, warn
from sandboxmgr.locations import create_private, loose_dirs, make_private, require_access
from sandboxmgr.locks import Lock, lock_file, remove_stale_locks
from sandboxmgr.names import check_name, overlay_unsafe
from sandboxmgr.record import read_json, record, write_json
from sandboxmgr.removal import detach_mounts, remove_tree

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from typing import Any

TOP_DIRS = ("images", "layers", "cache", "sandboxes", "tmp", "locks", "logs", "refs")


# --- records ---------------------------------------------------------------------------------


@record
class LayerRecord:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def diff(self) -> Path:
        return self.path / "diff"


@record
class ImageRecord:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def profile(self) -> str:
        return str(self.meta.get("profile", "?"))

    @property
    def built_ns(self) -> int:
        """When it was built, in ns: orders two builds of one profile within the same second."""
        return int(self.meta.get("built_ns", 0))

    @property
    def layers(self) -> list[str]:
        """Layer keys, bottom (the bootstrap) first."""
        return [str(key) for key in self.meta.get("layers", [])]


@record
class SandboxRecord:
    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def work(self) -> Path:
        return self.path / "work"

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def image_key(self) -> str:
        return str(self.meta["image"])


def _random_hex(size: int) -> str:
    return os.urandom(size).hex()  # not secrets.token_hex: its import costs the fast path


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _listed(directory: Path) -> list[str]:
    """The names in one of the store's directories, sorted; none while it does not exist."""
    return sorted(os.listdir(directory)) if directory.is_dir() else []


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        if overlay_unsafe(self.root, blanks=True):
            raise SandboxError(
                f"the store path {shown(str(self.root))} contains a character overlayfs options cannot carry",
                hint="use a path without spaces, commas, colons or backslashes (--store DIR)",
            )
        self.images_dir = self.root / "images"
        self.layers_dir = self.root / "layers"
        self.cache_dir = self.root / "cache"
        self.sandboxes_dir = self.root / "sandboxes"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.logs_dir = self.root / "logs"
        self.refs_dir = self.root / "refs"
        self.trust_file = self.root / "trusted.json"
        self._private_paths = tuple(str(path) for path in self.private_dirs())

    def private_dirs(self) -> list[Path]:
        """The store's root and its top directories: no one but their owner may enter them."""
        return [self.root, *(self.root / name for name in TOP_DIRS)]

    def ensure(self) -> None:
        """Create the store's directories, each 0700, and tighten any an older version or a
        user made looser (a checkout's sandboxes/ is 0755 as git made it)."""
        create_private(self.root, self._private_paths)

    def tighten(self) -> None:
        """Make the directories of the store that exist 0700 again (nothing is created)."""
        make_private(self._private_paths, create=False)

    def loose_dirs(self) -> list[tuple[Path, int]]:
        """The store's directories that another local user may enter, with their modes."""
        return loose_dirs(self.private_dirs())

    def require_access(self, directory: Path) -> None:
        """For the commands that only read (ls, images): a clear error, not a traceback or an
        empty list, when the store is root's and the caller is not."""
        require_access(self.root, directory)

    # -- locks and temporary trees
    def lock(self, kind: str, name: str) -> Lock:
        return Lock(lock_file(self.locks_dir, kind, name))

    @contextmanager
    def _claim(self, purpose: str, size: int) -> Iterator[Path]:
        """A fresh path in tmp/ (not made yet), locked while in use: a tmp entry whose lock is
        free is a dead process's leftover (clean_leftovers). The lock file goes afterwards."""
        self.ensure()
        ident = f"{purpose}-{_random_hex(size)}"
        lock = self.lock("tmp", ident)
        if not lock.try_acquire():  # pragma: no cover - random names do not clash
            raise BusyError(f"temporary directory {ident} is in use")
        try:
            yield self.tmp_dir / ident
        finally:
            lock.release()
            lock.path.unlink(missing_ok=True)

    @contextmanager
    def temporary(self, purpose: str) -> Iterator[Path]:
        """A fresh directory in tmp/, locked while in use, removed afterwards."""
        with self._claim(purpose, 6) as path:
            try:
                path.mkdir()
                yield path
            except (OSError, SandboxError) as exc:
                # Said while the half-made tree still fills the disk (it goes below).
                full = out_of_space(exc, self.root, self.tmp_dir)
                if full is None:
                    raise
                raise full from exc
            finally:
                remove_tree(path)

    def clean_leftovers(self) -> list[Path]:
        """Remove tmp/ entries of processes that died (their lock is free), and lock files of
        tmp entries and sandboxes that are gone (a kill between removing one and its lock)."""
        removed: list[Path] = []
        self.tighten()
        if not self.tmp_dir.is_dir():
            return removed
        # str: no Path cost per lock
        homes = {"tmp": str(self.tmp_dir), **dict.fromkeys(("sandbox", "live", "use"), str(self.sandboxes_dir))}
        remove_stale_locks(self.locks_dir, homes)
        for entry in sorted(self.tmp_dir.iterdir()):
            lock = self.lock("tmp", entry.name)
            if not lock.try_acquire():
                continue
            try:
                remove_tree(entry)
                removed.append(entry)
            except (OSError, SandboxError) as exc:
                # A leftover that cannot go (still mounted, say) must not stop every command.
                warn(f"cannot remove the leftover {entry}: {exc}; 'sandboxmgr doctor' says more")
            finally:
                lock.release()
                lock.path.unlink(missing_ok=True)
        return removed

    # -- layers
    def layer(self, key: str) -> LayerRecord | None:
        path = self.layers_dir / key
        try:
            return LayerRecord(key, path, read_json(path / "layer.json"))
        except (OSError, ValueError):
            return None

    def layers(self) -> list[LayerRecord]:
        return [r for r in map(self.layer, _listed(self.layers_dir)) if r is not None]

    def publish_layer(self, tmp: Path, key: str, meta: dict[str, Any]) -> LayerRecord:
        """Rename a finished layer (tmp/diff) into place: the only moment it appears."""
        write_json(tmp / "layer.json", meta)
        target = self.layers_dir / key
        if target.exists():  # a rebuild (--rebuild): the old layer makes way only now
            with self._discarding(target, f"replaced-{key}"):
                os.rename(tmp, target)
        else:
            os.rename(tmp, target)
        return LayerRecord(key, target, meta)

    @contextmanager
    def _discarding(self, path: Path, purpose: str) -> Iterator[None]:
        """Move ``path`` into tmp/ under a lock of its own, then delete it.

        Out of its place first, so a crash mid-delete leaves a tmp leftover, never a
        half-deleted image or sandbox; locked, so another command's clean_leftovers
        does not delete the same tree at the same time.
        """
        detach_mounts([path])  # refused in its place: `rm`/`rmi` again finds it after an umount
        with self._claim(purpose, 4) as doomed:
            try:
                os.rename(path, doomed)
            except FileNotFoundError:
                raise NotFoundError(f"{path.name} is gone: another command removed it first",
                                    hint="nothing to do") from None
            yield
            remove_tree(doomed)

    def lower_dirs(self, image: ImageRecord) -> tuple[Path, ...]:
        """The image's layer dirs as overlayfs lowerdirs: top first."""
        dirs = []
        for key in reversed(image.layers):
            layer = self.layer(key)
            if layer is None:
                raise SandboxError(
                    f"layer {key} of image {image.key} ({image.profile}) is missing from the store",
                    hint=f"rebuild it: sandboxmgr build --rebuild {image.profile}",
                )
            dirs.append(layer.diff)
        return tuple(dirs)

    # -- images
    def image(self, key: str) -> ImageRecord | None:
        path = self.images_dir / key
        try:
            return ImageRecord(key, path, read_json(path / "image.json"))
        except (OSError, ValueError):
            return None

    def images(self) -> list[ImageRecord]:
        self.require_access(self.images_dir)
        records = [r for r in map(self.image, _listed(self.images_dir)) if r is not None]
        return sorted(records, key=lambda r: (r.profile, r.built_ns))

    def publish_image(self, key: str, meta: dict[str, Any]) -> ImageRecord:
        """Write an image record (its layers exist already) atomically."""
        self.ensure()
        target = self.images_dir / key
        made = not target.is_dir()
        target.mkdir(exist_ok=True)
        try:
            write_json(target / "image.json", meta)
        except OSError:
            if made:  # a full disk: no empty image directory left behind either
                with suppress(OSError):
                    target.rmdir()
            raise
        return ImageRecord(key, target, meta)

    def users(self, record: ImageRecord) -> list[str]:
        """The named sandboxes over an image."""
        return [s.name for s in self.sandboxes() if s.meta.get("image") == record.key]

    def remove_image(self, record: ImageRecord) -> list[str]:
        """Remove an image record, then every layer no other image uses; the removed layers' keys."""
        lock = self.lock("image", record.key)
        lock.acquire(False, f"image {record.key} ({record.profile}) is in use by a build or a running sandbox",
                     "wait for it to finish, then try again")
        with lock:
            # Checked under the lock: a sandbox is created holding the image (sandbox.create).
            users = self.users(record)
            if users:
                raise SandboxError(
                    f"image {record.key} ({record.profile}) is used by sandbox {', '.join(users)}",
                    hint=f"remove the sandbox first: sandboxmgr rm {' '.join(users)}",
                )
            # The layers going with it first: a refusal must not leave an image without its record.
            shared = {key for image in self.images() if image.key != record.key for key in image.layers}
            detach_mounts(self.layers_dir / key for key in record.layers if key not in shared)
            with self._discarding(record.path, f"rmi-{record.key}"):
                pass
        return self.remove_unused_layers()

    def remove_unused_layers(self) -> list[str]:
        """Delete layers that no image references (a layer being built is not published yet)."""
        used = {key for image in self.images() for key in image.layers}
        removed = []
        for layer in self.layers():
            if layer.key in used:
                continue
            lock = self.lock("layer", layer.key)
            if not lock.try_acquire():
                continue  # a build holds it: it is being made, or used by an image being recorded
            with lock:
                # A build may have recorded an image over this layer since the list above.
                if any(layer.key in image.layers for image in self.images()):
                    continue
                with self._discarding(layer.path, f"prune-{layer.key}"):
                    pass
            removed.append(layer.key)
        return removed

    # -- sandboxes
    def sandbox(self, name: str) -> SandboxRecord:
        check_name(name, "sandbox name")
        path = self.sandboxes_dir / name
        meta_path = path / "sandbox.json"
        if not meta_path.is_file():
            close = [s.name for s in self.sandboxes() if s.name.startswith(name[:3])]
            hint = f"did you mean {', '.join(close[:3])}?" if close else "see 'sandboxmgr ls'"
            raise NotFoundError(f"no sandbox named {name!r}", hint=hint)
        return SandboxRecord(name, path, read_json(meta_path))

    def sandboxes(self) -> list[SandboxRecord]:
        self.require_access(self.sandboxes_dir)
        result = []
        for entry in (self.sandboxes_dir / name for name in _listed(self.sandboxes_dir)):
            meta_path = entry / "sandbox.json"
            if meta_path.is_file():
                try:
                    result.append(SandboxRecord(entry.name, entry, read_json(meta_path)))
                except (OSError, ValueError):
                    continue
        return result

    def create_sandbox(self, name: str, meta: dict[str, Any]) -> SandboxRecord:
        check_name(name, "sandbox name")
        self.ensure()
        target = self.sandboxes_dir / name
        if target.exists():
            raise SandboxError(f"a sandbox named {name!r} already exists",
                               hint=f"pick another --name, or remove it: sandboxmgr rm {name}")
        with self._claim(f"create-{name}", 4) as tmp:
            try:
                tmp.mkdir()
                for sub in ("upper", "work", "root"):
                    (tmp / sub).mkdir()
                write_json(tmp / "sandbox.json", meta)
                try:
                    os.rename(tmp, target)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise SandboxError(f"a sandbox named {name!r} already exists",
                                           hint="pick another --name") from None
                    raise
            finally:
                if tmp.exists():
                    remove_tree(tmp)
        return SandboxRecord(name, target, meta)

    def remove_sandbox(self, record: SandboxRecord) -> None:
        """Remove a stopped sandbox; the caller holds its transition lock (live.remove)."""
        with self._discarding(record.path, f"rm-{record.name}"):
            pass
        # Unlinked while held: whoever waits on this file then sees it is gone (_flock).
        self.lock("sandbox", record.name).path.unlink(missing_ok=True)
