"""Builders: how a root filesystem gets made, one layer at a time.

A builder works in two phases, like kiwi and mock: :meth:`Builder.bootstrap`
runs a host tool (debootstrap, mmdebstrap, dnf) to make a minimal root in an
empty directory - the bottom layer; :meth:`Builder.install` then adds the
profile's packages with the target's own package manager, run inside the root,
into a layer of its own (an overlayfs upper directory over the bootstrap).
Builders know nothing of the CLI or the store: they get a :class:`BuildRoot`
and a :class:`BuildContext`. The builders of a distribution family live in its
module (sandboxmgr/families/); this package holds what they share: the roots, the
context, the Debian index and package cache (debindex, debcache) and fetching an
index (index.py).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from sandboxmgr import distros
from sandboxmgr.enter import DirectoryRoot, OverlayRoot, enter
from sandboxmgr.errors import BuildError, SandboxError
from sandboxmgr.mounts import BindMount, overlay_options
from sandboxmgr.profile import Profile
from sandboxmgr.progress import Progress
from sandboxmgr.sandbox import cache_views
from sandboxmgr.spec import DEFAULT_PATH, EnterSpec

# Called with each line a build step prints (a progress parser, builders/pkgprogress.py).
OnLine = Callable[[str], object]


@dataclass(frozen=True)
class BuildRoot:
    """The root one build step works on: ``upper`` (the layer being made, where
    every write lands) over ``lowers`` (its parent layers, top first). Without
    lowers, ``upper`` is a whole root (the bootstrap layer)."""

    upper: Path
    lowers: tuple[Path, ...] = ()
    work: Path | None = None
    mountpoint: Path | None = None

    def spec_root(self) -> DirectoryRoot | OverlayRoot:
        if not self.lowers:
            return DirectoryRoot(self.upper)
        assert self.work is not None and self.mountpoint is not None
        # Not volatile: a layer's steps mount the same upper again, and the kernel refuses
        # to remount an upper that a volatile mount left.
        return OverlayRoot(self.lowers, self.upper, self.work, self.mountpoint)

    def overlay_options(self) -> str:
        return overlay_options(self.lowers, self.upper, str(self.work))

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the merged view (an overlayfs whiteout hides it)."""
        relative = path.lstrip("/")
        for layer in (self.upper, *self.lowers):
            try:
                info = os.lstat(layer / relative)
            except (FileNotFoundError, NotADirectoryError):
                continue
            is_whiteout = stat.S_ISCHR(info.st_mode) and info.st_rdev == 0
            return not is_whiteout
        return False

    def in_upper(self, path: str) -> Path:
        """``path`` in the layer's own directory, refusing to pass a symlink on the way:
        the host follows symlinks here, and a build step could have planted one
        (``ln -s /somewhere /usr/sbin``) to make the host write or delete outside."""
        current = self.upper
        for name in [p for p in path.split("/") if p][:-1]:
            current = current / name
            if current.is_symlink():
                raise BuildError(f"a build step made {path!r}'s directory a symlink ({current})",
                                 hint="sandboxmgr does not follow it out of the build; change the step")
        return self.upper / path.lstrip("/")

    def write_build_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file that exists only while the layer is built (see :meth:`remove_build_file`).
        Whatever has its name goes first, and the file is made anew without following a
        symlink: a bootstrap may have left one there pointing at a host file."""
        target = self.in_upper(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            raise BuildError(f"{path} is a directory in the root being built", hint="a build step made it; change it")
        if target.is_symlink() or target.exists():
            target.unlink()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def remove_build_file(self, path: str) -> None:
        self.in_upper(path).unlink(missing_ok=True)

    def drop_changes(self, path: str, keep: tuple[str, ...] = ()) -> None:
        """Drop what this layer changed in the directory ``path`` (entries named in ``keep``
        stay), so that its lower layers' entries show through again: new files go, and so do
        whiteouts (a deleted file comes back). Nothing is followed: the steps ran as root in it."""
        from sandboxmgr.removal import remove_tree

        try:
            directory = self.in_upper(path)
        except BuildError:
            return  # a step made a directory on the way a symlink: nothing is given back through it
        if directory.is_symlink() or not directory.is_dir():
            return  # unchanged, or made something else (a whiteout: the step removed it all)
        for entry in sorted(directory.iterdir()):
            if entry.name not in keep:
                remove_tree(entry)


class MissingVersions(BuildError):
    """The archive lacks pinned versions (``name=version``) a build asked for: ``missing`` names them."""

    def __init__(self, message: str, missing: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.missing = missing


def missing_pins(log: str, packages: Sequence[str]) -> list[str]:
    """The pinned packages (``name=version``) apt's output (``log``) says the archive lacks: the version,
    or the package altogether."""
    pins = {package.partition("=")[0]: package for package in packages if "=" in package}
    # Only pins asked for: the log also holds what maintainer scripts print, and a line of theirs
    # could name anything (a terminal's escape sequence) in the error, or make recreate drop a pin.
    found = [pin for version, name in re.findall(r"Version '([^'\s]+)' for '([^'\s]+)' was not found", log)
             if (pin := f"{name}={version}") in pins.values()]
    found += [pins[name] for name in re.findall(r"Unable to locate package (\S+)", log) if name in pins]
    return list(dict.fromkeys(found))


class VerifiedCache(Protocol):
    """A shared package cache that only verified packages enter or leave (debcache.py)."""

    def stage(self, target: Path) -> int:
        """Copy the cached packages that verify into ``target`` (for a tool that may write
        them); how many."""

    def keep(self, source: Path) -> int:
        """Copy the packages in ``source`` that verify into the cache; how many."""

    def ready(self) -> None:
        """Wait until verifying is possible; raise BuildError when it never will be."""

    def view(self) -> Path | None:
        """The lower directory of build steps' copy-on-write view: only verified packages."""


@dataclass(frozen=True)
class BuildContext:
    log_file: Path
    progress: Progress
    # The shared package caches, shown to every build step copy-on-write: a step's writes
    # land in an upper directory of the layer's own and never in the cache itself.
    caches: tuple[BindMount, ...] = ()
    # Where verified packages come from and go to (None: the cache is the package
    # manager's own business, as dnf's, which checks every package's signature).
    verified: VerifiedCache | None = None

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the log gained after ``offset`` (one step's output, for error messages)."""
        with open(self.log_file, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def run_inside(self, root: BuildRoot, argv: Sequence[str], env: Mapping[str, str] | None = None,
                   binds: tuple[BindMount, ...] = (), with_caches: bool = True, on_line: OnLine | None = None) -> int:
        """Run a command inside the root being built, output to the build log (and each line
        to ``on_line``). The step's new downloads in the cache views are verified and kept
        afterwards."""
        full_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8"}
        full_env.update(env or {})
        caches = self.caches if with_caches else ()
        if caches and self.verified is not None:
            # Not the cache itself, whose files apt would trust by their size: only what
            # verified against this build's signed index.
            lower = self.verified.view()
            caches = tuple(BindMount(lower, cache.target) for cache in caches) if lower is not None else ()
        views: tuple[BindMount, ...] = ()
        if caches:
            # A directory made now, under a name no one could guess, never one that exists:
            # the build's directory held a bootstrap tool before, and the upper directory of an
            # overlay is where the host writes (never a symlink a tool planted to a host path).
            fresh = root.upper.parent / f"cache-views-{os.urandom(6).hex()}"
            fresh.mkdir(mode=0o700)
            views = cache_views(caches, fresh)
        try:
            return self._run_inside(root, argv, full_env, views + binds, on_line)
        finally:
            if self.verified is not None:
                for view in views:
                    assert view.scratch is not None
                    self.verified.keep(view.scratch / "upper")

    def _run_inside(self, root: BuildRoot, argv: Sequence[str], full_env: Mapping[str, str],
                    binds: tuple[BindMount, ...], on_line: OnLine | None) -> int:
        with open(self.log_file, "a") as log:
            log.write(f"$ (inside) {shlex.join(argv)}\n")
            log.flush()
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with _lines_to(log, on_line) as output:
                    spec = EnterSpec(
                        root=root.spec_root(),
                        argv=tuple(argv),
                        env=full_env,
                        hostname="sandboxmgr-build",
                        network="host",
                        binds=binds,
                        stdio=(null, output, output),
                        interruptible=True,
                    )
                    try:
                        return enter(spec)
                    except SandboxError as exc:
                        raise BuildError(f"cannot run {argv[0]} in the new root: {exc.message}",
                                         hint=exc.hint) from None
            finally:
                os.close(null)


@contextmanager
def _lines_to(log: TextIO, on_line: OnLine | None) -> Iterator[int]:
    """The descriptor a step writes its output to: the log itself, or (with ``on_line``) a pipe
    whose lines a thread copies into the log and hands to ``on_line`` as they come."""
    if on_line is None:
        yield log.fileno()
        return
    import threading

    read, write = os.pipe2(os.O_CLOEXEC)

    def copy() -> None:
        show: OnLine | None = on_line
        with open(read, "rb") as lines:
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                try:
                    if show is not None:
                        show(line)
                except Exception:
                    logging.getLogger("sandboxmgr").debug("progress display failed", exc_info=True)
                    show = None
        log.flush()

    thread = threading.Thread(target=copy, name="build-output", daemon=True)
    thread.start()
    try:
        yield write
    finally:
        os.close(write)  # the step is over (its PID namespace with it): the copy reads to the end
        thread.join()


class Builder(ABC):
    """Makes a root filesystem for one bootstrap method."""

    method: str
    # Directories whose changes only a bootstrap keeps (the names in the second item stay):
    # a layer above gives them back to its parents (images.py), as the Debian family's
    # package lists, which a setup step's 'apt-get update' would copy up whole.
    parents_keep: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @abstractmethod
    def preflight(self, profile: Profile) -> None:
        """Check everything that can be checked before any work starts."""

    def cache_dirs(self, profile: Profile, cache: Path) -> tuple[BindMount, ...]:
        """Package caches to share across builds and sandboxes (``cache`` is per distro/release/arch);
        builds and sandboxes see them copy-on-write."""
        return ()

    def open_cache(self, profile: Profile, cache: Path, scratch: Path | None = None) -> VerifiedCache | None:
        """The verified view of the package cache for one build (fetching what verifying
        needs; ``scratch`` a directory of the build's own), or None when the family leaves
        verification to its package manager."""
        return None

    @abstractmethod
    def bootstrap(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        """Make a minimal root in ``rootfs`` (which does not exist yet) with host tools."""

    def index_state(self, profile: Profile) -> str | None:
        """A digest of the package index the bootstrap would install from right now and
        of the tool that would do it, or None when that cannot be known; raises
        index.Unreachable (builders/index.py) when the network does not reach the mirror. Equal
        digests: a bootstrap would give the same root (see rootcache.py)."""
        return None

    @abstractmethod
    def install(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        """Install ``profile.packages`` with the target's own package manager, into ``root.upper``."""

    def prepare(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:  # noqa: B027 - optional
        """Build-only settings before the steps of a layer (e.g. no daemons may start)."""

    @abstractmethod
    def finish(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        """Undo build-only settings and drop caches before a layer is published."""


def builder_for(profile: Profile) -> Builder:
    """The builder of the profile's bootstrap method, from its distribution family."""
    return distros.of(profile).builder(profile.bootstrap.method)
