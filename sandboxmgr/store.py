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

The store's root and every top directory are root's alone (0700): root inside a
sandbox can plant a setuid-root binary or a device node in its upper directory,
images have setuid binaries of their own, and the store is on an ordinary file
system (not nosuid, not nodev). A local user who could reach those files by path
would run them as root or open the devices. :meth:`Store.ensure` makes the store
so, and tightens one whose modes were loosened; ``doctor`` reports it.

Everything is created in ``tmp/`` and renamed into place when complete, so a
crash never leaves a half-made image or sandbox that looks finished. A tmp
entry whose lock nobody holds is a leftover of a dead process and is removed
by the next command. Removal goes through :func:`remove_tree`, which never
deletes through a mount.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sandboxmgr import linux, mountinfo
from sandboxmgr.errors import BusyError, NoSpaceError, NotFoundError, SandboxError, UnsafeRemovalError, no_space
from sandboxmgr.names import check_name
from sandboxmgr.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from typing import Any

_UNSAFE_CHARS = set(",:\\\n\t ")
# As Docker's /var/lib/docker (0710), but without even the group's search right.
STORE_MODE = 0o700
TOP_DIRS = ("images", "layers", "cache", "sandboxes", "tmp", "locks", "logs", "refs")


# --- safe removal ---------------------------------------------------------------------


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
    for point in mountinfo.mounts_under(path):
        with suppress(OSError):
            linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    left = mountinfo.mounts_under(path)
    if left:
        raise UnsafeRemovalError(
            f"refusing to delete {path}: {left[0]} is still mounted inside it",
            hint=f"unmount it (umount -l {left[0]}) and try again; nothing was deleted",
        )
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _remove_contents(top, info.st_dev, str(path))
    finally:
        os.close(top)
    os.rmdir(path)


def _remove_contents(dir_fd: int, device: int, where: str) -> None:
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
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
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _remove_contents(child, device, f"{where}/{name}")
        finally:
            os.close(child)
        os.rmdir(name, dir_fd=dir_fd)


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


# --- locks ---------------------------------------------------------------------------------


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
        fd = _flock(self.path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False
        self._hold(fd, exclusive=True)
        return True

    def acquire(self, wait: bool, busy_message: str, hint: str) -> None:
        if self.try_acquire():
            return
        if not wait:
            raise BusyError(busy_message + self.holder_text(), hint=hint)
        fd = _flock(self.path, fcntl.LOCK_EX)
        assert fd is not None  # a blocking flock returns only when it holds the lock
        self._hold(fd, exclusive=True)

    def acquire_shared(self) -> None:
        """A shared hold (several at once), blocking only while someone holds it exclusively."""
        fd = _flock(self.path, fcntl.LOCK_SH)
        assert fd is not None
        self._hold(fd, exclusive=False)

    def _hold(self, fd: int, exclusive: bool) -> None:
        self.fd = fd
        if exclusive:
            with suppress(OSError):  # only for "held by pid N": a full disk must not fail the lock
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        self.exclusive = exclusive

    def holder_text(self) -> str:
        """" (held by pid N)" while an exclusive holder that is alive wrote its pid, else ""."""
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (held by pid {pid})" if pid.isdigit() and os.path.exists(f"/proc/{pid}") else ""

    def release(self) -> None:
        if self.fd is not None:
            if self.exclusive:
                with suppress(OSError):
                    os.ftruncate(self.fd, 0)  # no stale pid for the next one who waits
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(path: Path, operation: int) -> int | None:
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


def _probe(path: Path, mode: int) -> bool:
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


def is_locked(path: Path) -> bool:
    """Whether someone holds the lock exclusively (a build, a command in a named sandbox)."""
    return _probe(path, fcntl.LOCK_SH)


def is_held(path: Path) -> bool:
    """Whether anyone holds the lock at all, shared (a running sandbox) or exclusive."""
    return _probe(path, fcntl.LOCK_EX)


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written record behind
        raise
    os.rename(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _random_hex(size: int) -> str:
    return os.urandom(size).hex()  # not secrets.token_hex: its import costs the fast path


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        if _UNSAFE_CHARS & set(str(self.root)):
            raise SandboxError(
                f"the store path {self.root} contains a character overlayfs options cannot carry",
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
        try:
            self._private(create=True)
        except PermissionError:
            raise SandboxError(f"cannot create the store at {self.root}: permission denied",
                               hint="run as root, or point --store at a directory you own") from None

    def tighten(self) -> None:
        """Make the directories of the store that exist 0700 again (nothing is created)."""
        self._private(create=False)

    def _private(self, create: bool) -> None:
        # One stat per directory (every run passes here twice: the fast path counts).
        for directory in self._private_paths:
            try:
                mode = os.stat(directory).st_mode
            except FileNotFoundError:
                if not create:
                    continue
                if directory == self._private_paths[0]:
                    os.makedirs(os.path.dirname(directory), exist_ok=True)
                with suppress(FileExistsError):
                    os.mkdir(directory, STORE_MODE)
                mode = os.stat(directory).st_mode
            if mode & 0o077:
                tighten_dir(Path(directory))

    def loose_dirs(self) -> list[tuple[Path, int]]:
        """The store's directories that another local user may enter, with their modes."""
        found = []
        for directory in self.private_dirs():
            try:
                mode = stat.S_IMODE(os.stat(directory).st_mode)
            except OSError:
                continue
            if mode & 0o077:
                found.append((directory, mode))
        return found

    def require_access(self, directory: Path) -> None:
        """For the commands that only read (ls, images): a clear error, not a traceback or an
        empty list, when the store is root's and the caller is not."""
        try:
            os.stat(directory)
        except FileNotFoundError:
            return
        except PermissionError:
            pass
        else:
            if os.access(directory, os.R_OK | os.X_OK):
                return
        raise SandboxError(
            f"cannot read the store {self.root}: it is root's alone (it holds setuid binaries "
            "and device nodes of sandboxes)",
            hint="run it as root (sudo sandboxmgr ...)")

    # -- locks
    def lock(self, kind: str, name: str) -> Lock:
        return Lock(self.locks_dir / f"{kind}-{name}.lock")

    # -- temporary trees
    @contextmanager
    def temporary(self, purpose: str) -> Iterator[Path]:
        """A fresh directory in tmp/, locked while in use, removed afterwards."""
        self.ensure()
        ident = f"{purpose}-{_random_hex(6)}"
        lock = self.lock("tmp", ident)
        if not lock.try_acquire():  # pragma: no cover - random names do not clash
            raise BusyError(f"temporary directory {ident} is in use")
        path = self.tmp_dir / ident
        try:
            path.mkdir()
            yield path
        except (OSError, SandboxError) as exc:
            # A tool that ran out of space (dnf, mmdebstrap) fails with its own words: say
            # what happened, while the half-made tree still fills the disk (it goes below).
            literal = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            if isinstance(exc, NoSpaceError) or not (literal or _full(self.tmp_dir)):
                raise
            if isinstance(exc, SandboxError):
                detail = exc.message
            else:
                detail = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
            raise no_space(self.root, f"{detail}; {_free_text(self.tmp_dir)}") from exc
        finally:
            try:
                remove_tree(path)
            finally:
                lock.release()
                lock.path.unlink(missing_ok=True)

    def clean_leftovers(self) -> list[Path]:
        """Remove tmp/ entries of processes that died (their lock is free), and lock files of
        tmp entries and sandboxes that are gone (a kill between removing one and its lock)."""
        removed: list[Path] = []
        self.tighten()
        if not self.tmp_dir.is_dir():
            return removed
        self._remove_stale_locks()
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

    def _remove_stale_locks(self) -> None:
        homes = {"tmp": str(self.tmp_dir), "sandbox": str(self.sandboxes_dir)}  # str: no Path cost per lock
        try:
            names = os.listdir(self.locks_dir)
        except FileNotFoundError:
            return
        for name in names:
            if not name.startswith(("sandbox-", "tmp-")) or not name.endswith(".lock"):
                continue  # image and layer locks stay with their image or layer
            kind, _, rest = name.partition("-")
            ident = rest[: -len(".lock")]
            if not ident.strip("."):
                continue
            home = f"{homes[kind]}/{ident}"
            if os.path.lexists(home):
                continue
            lock = self.lock(kind, ident)
            if not lock.try_acquire():
                continue  # in use: a tree being made, a command waiting for a sandbox
            try:
                if not os.path.lexists(home):  # not made meanwhile
                    lock.path.unlink(missing_ok=True)
            finally:
                lock.release()

    # -- layers
    def layer(self, key: str) -> LayerRecord | None:
        path = self.layers_dir / key
        try:
            return LayerRecord(key, path, _read_json(path / "layer.json"))
        except (OSError, ValueError):
            return None

    def layers(self) -> list[LayerRecord]:
        if not self.layers_dir.is_dir():
            return []
        records = [self.layer(entry.name) for entry in sorted(self.layers_dir.iterdir())]
        return [r for r in records if r is not None]

    def publish_layer(self, tmp: Path, key: str, meta: dict[str, Any]) -> LayerRecord:
        """Rename a finished layer (tmp/diff) into place: the only moment it appears."""
        _write_json(tmp / "layer.json", meta)
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
        self.ensure()
        ident = f"{purpose}-{_random_hex(4)}"
        lock = self.lock("tmp", ident)
        lock.try_acquire()
        doomed = self.tmp_dir / ident
        try:
            try:
                os.rename(path, doomed)
            except FileNotFoundError:
                raise NotFoundError(f"{path.name} is gone: another command removed it first",
                                    hint="nothing to do") from None
            yield
            remove_tree(doomed)
        finally:
            lock.release()
            lock.path.unlink(missing_ok=True)

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
            return ImageRecord(key, path, _read_json(path / "image.json"))
        except (OSError, ValueError):
            return None

    def images(self) -> list[ImageRecord]:
        self.require_access(self.images_dir)
        if not self.images_dir.is_dir():
            return []
        records = [self.image(entry.name) for entry in sorted(self.images_dir.iterdir())]
        return sorted((r for r in records if r is not None),
                      key=lambda r: (r.profile, r.built_ns))

    def publish_image(self, key: str, meta: dict[str, Any]) -> ImageRecord:
        """Write an image record (its layers exist already) atomically."""
        self.ensure()
        target = self.images_dir / key
        made = not target.is_dir()
        target.mkdir(exist_ok=True)
        try:
            _write_json(target / "image.json", meta)
        except OSError:
            if made:  # a full disk: no empty image directory left behind either
                with suppress(OSError):
                    target.rmdir()
            raise
        return ImageRecord(key, target, meta)

    def _users(self, record: ImageRecord) -> list[str]:
        return [s.name for s in self.sandboxes() if s.meta.get("image") == record.key]

    def remove_image(self, record: ImageRecord) -> list[str]:
        """Remove an image record, then every layer no other image uses; the removed layers' keys."""
        lock = self.lock("image", record.key)
        lock.acquire(False, f"image {record.key} ({record.profile}) is in use by a build or a running sandbox",
                     "wait for it to finish, then try again")
        with lock:
            # Checked under the lock: a sandbox is created holding the image (sandbox.create).
            users = self._users(record)
            if users:
                raise SandboxError(
                    f"image {record.key} ({record.profile}) is used by sandbox {', '.join(users)}",
                    hint=f"remove the sandbox first: sandboxmgr rm {' '.join(users)}",
                )
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

    def prune(self) -> tuple[list[str], list[str]]:
        """Remove superseded images no sandbox uses, then unused layers; return both lists of keys."""
        newest: dict[str, int] = {}
        for image in self.images():
            newest[image.profile] = max(image.built_ns, newest.get(image.profile, 0))
        removed_images: list[str] = []
        removed_layers: list[str] = []
        for image in self.images():
            if image.built_ns < newest[image.profile] and not self._users(image):
                removed_layers += self.remove_image(image)
                removed_images.append(image.key)
        return removed_images, removed_layers + self.remove_unused_layers()

    # -- sandboxes
    def sandbox(self, name: str) -> SandboxRecord:
        check_name(name, "sandbox name")
        path = self.sandboxes_dir / name
        meta_path = path / "sandbox.json"
        if not meta_path.is_file():
            close = [s.name for s in self.sandboxes() if s.name.startswith(name[:3])]
            hint = f"did you mean {', '.join(close[:3])}?" if close else "see 'sandboxmgr ls'"
            raise NotFoundError(f"no sandbox named {name!r}", hint=hint)
        return SandboxRecord(name, path, _read_json(meta_path))

    def sandboxes(self) -> list[SandboxRecord]:
        self.require_access(self.sandboxes_dir)
        if not self.sandboxes_dir.is_dir():
            return []
        result = []
        for entry in sorted(self.sandboxes_dir.iterdir()):
            meta_path = entry / "sandbox.json"
            if meta_path.is_file():
                try:
                    result.append(SandboxRecord(entry.name, entry, _read_json(meta_path)))
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
        ident = f"create-{name}-{_random_hex(4)}"
        lock = self.lock("tmp", ident)
        if not lock.try_acquire():  # pragma: no cover - random names do not clash
            raise BusyError(f"temporary directory {ident} is in use")
        tmp = self.tmp_dir / ident
        try:
            tmp.mkdir()
            for sub in ("upper", "work", "root"):
                (tmp / sub).mkdir()
            _write_json(tmp / "sandbox.json", meta)
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
            lock.release()
            lock.path.unlink(missing_ok=True)
        return SandboxRecord(name, target, meta)

    def remove_sandbox(self, record: SandboxRecord) -> None:
        lock = self.lock("sandbox", record.name)
        lock.acquire(False, f"sandbox {record.name!r} is in use",
                     "wait for the command running in it to finish, then try again")
        with lock:
            with self._discarding(record.path, f"rm-{record.name}"):
                pass
            # Unlinked while held: whoever waits on this file then sees it is gone (_flock).
            lock.path.unlink(missing_ok=True)


def _full(path: Path) -> bool:
    """Whether the file system of ``path`` is (as good as) full: less than 2% of its space (at
    least 8 MiB, at most 64 MiB: dnf refuses a transaction that would not fit, before the
    disk is quite full) or of its inodes left."""
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    free = info.f_bavail * info.f_frsize
    space = free < min(64 << 20, max(8 << 20, info.f_blocks * info.f_frsize // 50))
    inodes = info.f_files > 0 and info.f_favail < max(16, info.f_files // 50)
    return space or inodes


def _free_text(path: Path) -> str:
    try:
        info = os.statvfs(path)
    except OSError:
        return "free space unknown"
    return f"{info.f_bavail * info.f_frsize // 1024} kB free"


def tighten_dir(directory: Path) -> None:
    """Make a directory of the store 0700 (from anything looser); refuse a shared one."""
    info = os.stat(directory)
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if mode & (stat.S_ISVTX | stat.S_IWOTH) or os.path.realpath(directory) == "/":
        # /tmp, /: making it 0700 would break the machine, and a store there is not one's own.
        raise SandboxError(f"the store {directory} is a shared directory (mode {mode:04o}), not one of its own",
                           hint="point --store (or SANDBOXMGR_STORE) at a new directory, e.g. /var/lib/sandboxmgr")
    os.chmod(directory, mode & ~0o077)


def warn(message: str) -> None:
    print(f"sandboxmgr: warning: {message}", file=sys.stderr)
