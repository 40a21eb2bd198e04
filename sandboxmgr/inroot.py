"""Paths inside a root: what a path of the sandbox is, without leaving the root.

The mounts of a sandbox are made before it runs, from the host's side, onto
paths of the image - an image (or a named sandbox's changes) whose ``/src`` is
a symlink to ``/etc`` must get the mount on its own ``/etc``, never the host's.
:func:`open_in_root` resolves a path as the sandbox will see it and returns an
``O_PATH`` descriptor; :mod:`sandboxmgr.enter` mounts onto ``/proc/self/fd/N``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from sandboxmgr import linux
from sandboxmgr.errors import SandboxError
from sandboxmgr.errors import shown as quoted

_RESOLVE = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
_MAX_SYMLINKS = 40
_openat2_missing = False


class SymlinkRefused(SandboxError):
    """A path that must be a real directory (/proc, /dev ...) is a symlink in the image."""


def open_in_root(root_fd: int, path: str, create: bool = False, is_file: bool = False,
                 follow: bool = True) -> int:
    """An ``O_PATH`` file descriptor on ``path`` as the sandbox will see it.

    Symlinks are followed as if ``root_fd`` were ``/``: an absolute link or a
    ``..`` never leaves the root (with ``follow=False`` any symlink on the way
    is refused). The kernel does it with ``openat2(RESOLVE_IN_ROOT)`` where it
    has it; otherwise, and to create what is missing (``create``: directories,
    and a file last when ``is_file``), a walk of one ``openat`` per component
    with ``O_NOFOLLOW``, each relative to the previous directory's descriptor.

    Callers mount onto ``/proc/self/fd/N`` of the result, as runc does: the
    mount lands on the very inode that was resolved, so a symlink swapped in
    between resolving and mounting (CVE-2021-30465) cannot redirect it.
    """
    global _openat2_missing  # noqa: PLW0603 - probed once per process
    if not _openat2_missing:
        resolve = _RESOLVE | (0 if follow else linux.RESOLVE_NO_SYMLINKS)
        try:
            return linux.openat2(root_fd, path, os.O_PATH, resolve)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                _openat2_missing = True
            elif exc.errno == errno.ELOOP and not follow:
                raise SymlinkRefused(*_refusal(path)) from None
            else:
                raise
    fd, _ = _walk(root_fd, path, create, is_file, follow)
    return fd


def _refusal(path: str, where: str = "") -> tuple[str, str]:
    return (f"{path} is a symlink{where} in the sandbox's root; refusing to mount there",
            "a sandbox's /proc, /sys, /dev, /tmp and /run must be directories in the image; "
            "if the sandbox made the link, remove it from the sandbox's changes (or the sandbox)")


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _walk(root_fd: int, path: str, create: bool, is_file: bool, follow: bool) -> tuple[int, list[str]]:
    """The component walk of :func:`open_in_root`: (an O_PATH fd, the components it resolved to)."""
    stack: list[tuple[int, str]] = []  # open directories below the root, with their names
    parts = _components(path)
    hops = 0
    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if stack:
                    os.close(stack.pop()[0])
                continue
            here = stack[-1][0] if stack else root_fd
            shown = "/" + "/".join([n for _, n in stack] + [name])
            try:
                info = os.stat(name, dir_fd=here, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise FileNotFoundError(errno.ENOENT, f"{quoted(shown)} does not exist in the root") from None
                if parts or not is_file:
                    os.mkdir(name, 0o755, dir_fd=here)
                else:
                    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=here))
                info = os.stat(name, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                if not follow:
                    link = quoted(os.readlink(name, dir_fd=here))
                    raise SymlinkRefused(*_refusal(path, f" ({quoted(shown)} -> {link})"))
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"too many symlinks resolving {path} in the root")
                link = os.readlink(name, dir_fd=here)
                if link.startswith("/"):
                    while stack:
                        os.close(stack.pop()[0])
                parts = _components(link) + parts
                continue
            if parts and not stat.S_ISDIR(info.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, f"{quoted(shown)} is not a directory in the root")
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                os.close(fd)
                raise OSError(errno.EAGAIN, f"{shown} changed while it was resolved")
            stack.append((fd, name))
        names = [n for _, n in stack]
        if stack:
            return stack.pop()[0], names
        return os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd), names
    finally:
        for fd, _ in stack:
            os.close(fd)


def resolve_in_root(root: Path, path: str, create: bool = False, is_file: bool = False) -> Path:
    """Where ``path`` of the sandbox is under ``root`` on the host (the walk of
    :func:`open_in_root`, as a path: for tests and messages, never for mounting)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, names = _walk(root_fd, path, create, is_file, follow=True)
        os.close(fd)
    finally:
        os.close(root_fd)
    return root.joinpath(*names)
