"""Carry out a mount plan (see mounts.py): each :class:`MountStep` as mount(2) calls.

Runs in the sandbox's PID 1, in its new mount namespace, before the root
switch. Every target is resolved inside the root (inroot.open_in_root) and
mounted through ``/proc/self/fd/N``, as runc does, so a symlink swapped in
between resolving and mounting cannot redirect a mount onto the host.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from sandboxmgr import linux
from sandboxmgr.errors import SandboxError
from sandboxmgr.inroot import open_in_root
from sandboxmgr.mounts import NOSUID_NODEV_NOEXEC, Device, MountStep, overlay_options, refuse_kernel_target


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_volatile(source: str | Path, target: str | Path, fstype: str, flags: int, data: str | None) -> None:
    """A mount whose options may ask for an overlay without sync (``,volatile``)."""
    try:
        linux.mount(source, target, fstype, flags, data)
    except OSError as exc:  # kernels before 5.10 have no volatile overlay: mount without it
        if exc.errno != errno.EINVAL or not (data or "").endswith(",volatile"):
            raise
        linux.mount(source, target, fstype, flags, (data or "").removesuffix(",volatile"))


def mount_overlay_root(lowers: tuple[Path, ...], upper: Path, work: Path, mountpoint: Path,
                       volatile: bool) -> Path:
    # nodev everywhere but on the device binds of /dev: see mounts.DEVICES.
    _mount_volatile("overlay", mountpoint, "overlay", linux.MS_NODEV,
                    overlay_options(lowers, upper, work, volatile))
    return mountpoint


def mount_directory_root(path: Path) -> Path:
    # A root a bootstrap tool made: it may have left a symlink to a host directory in its place.
    if path.is_symlink() or not path.is_dir():
        raise SandboxError(f"the root being built, {path}, is not a directory (a symlink?)",
                           hint="something in the build replaced it; the build is refused")
    # pivot_root needs the new root to be a mount point.
    linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    linux.mount(None, path, None, linux.MS_BIND | linux.MS_REMOUNT | linux.mount_flags(path) | linux.MS_NODEV)
    return path


def carry_out(root_fd: int, steps: list[MountStep]) -> None:
    """Every step of a plan (mounts.full_plan), in order, in the root open at ``root_fd``."""
    for step in steps:
        if step.kind in ("mask", "readonly"):
            _protect(root_fd, step)
        elif step.kind == "link":
            _link(root_fd, step)
        else:
            mount_step(root_fd, step)


def mount_step(root_fd: int, step: MountStep) -> None:
    """A mount or a bind (kind ""): onto a real directory, or through the image's
    symlinks inside the root when the step says ``follow``."""
    if step.device is not None:
        _check_device(step.source, step.device)
    target = open_in_root(root_fd, step.target, create=True, is_file=step.is_file, follow=step.follow)
    try:
        if step.follow:
            # A target that is spelled harmlessly but is a symlink in the image into
            # /proc, /sys or /dev is refused like one spelled so (mounts.refuse_kernel_target).
            root = os.readlink(fd_path(root_fd))
            refuse_kernel_target(step.target, "/" + os.path.relpath(os.readlink(fd_path(target)), root))
        if step.fstype is not None:
            _mount_volatile(step.source, fd_path(target), step.fstype, step.flags, step.data)
            return
        source = os.stat(step.source)
        linux.mount(step.source, fd_path(target), None, linux.MS_BIND | linux.MS_REC)
    finally:
        os.close(target)
    # A bind remount replaces every per-mount flag: keep the source's, add nodev
    # (see mounts.DEVICES) and ro. The path is opened again: the new mount is on top.
    mounted = open_in_root(root_fd, step.target, follow=step.follow)
    try:
        now = os.fstat(mounted)
        if (now.st_dev, now.st_ino) != (source.st_dev, source.st_ino):
            raise SandboxError(f"the bind mount on {step.target} is not {step.source} after mounting it",
                               hint="something changed the sandbox's root while it was set up; try again")
        flags = linux.mount_flags(mounted) | (0 if step.device else linux.MS_NODEV)
        flags |= (linux.MS_RDONLY if step.readonly else 0) | step.flags
        linux.mount(None, fd_path(mounted), None, linux.MS_BIND | linux.MS_REMOUNT | flags)
    finally:
        os.close(mounted)


def _check_device(source: str, device: Device) -> None:
    """The host's node must be the device it is named for (the sandbox gets it read-only)."""
    info = os.stat(source)
    if not stat.S_ISCHR(info.st_mode) or info.st_rdev != os.makedev(device.major, device.minor):
        raise SandboxError(f"the host's {source} is not the {device.name} device "
                           f"({device.major}:{device.minor})", hint=f"restore {source} on the host")


def _link(root_fd: int, step: MountStep) -> None:
    """A symlink in a directory the sandbox's own file systems made (/dev's links)."""
    parent, _, name = step.target.rpartition("/")
    directory = open_in_root(root_fd, parent or "/", follow=False)
    try:
        os.symlink(step.source, name, dir_fd=directory)
    finally:
        os.close(directory)


def _protect(root_fd: int, step: MountStep) -> None:
    """A mask (/dev/null on a file, an empty read-only tmpfs on a directory) or a
    read-only bind of a path onto itself; a path this kernel lacks is skipped."""
    try:
        target = open_in_root(root_fd, step.target, follow=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        is_dir = stat.S_ISDIR(os.fstat(target).st_mode)
        if step.kind == "mask" and is_dir:
            linux.mount("tmpfs", fd_path(target), "tmpfs",
                        linux.MS_RDONLY | NOSUID_NODEV_NOEXEC, "mode=0555")
            return
        source = step.source if step.kind == "mask" else fd_path(target)
        linux.mount(source, fd_path(target), None, linux.MS_BIND | linux.MS_REC)
    finally:
        os.close(target)
    mounted = open_in_root(root_fd, step.target, follow=False)
    try:
        # A masked file reads as empty, as under runc: /dev/null's bind keeps its dev.
        keep_dev = linux.MS_NODEV if step.kind == "readonly" else 0
        flags = linux.mount_flags(mounted) | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC | keep_dev
        linux.mount(None, fd_path(mounted), None, linux.MS_BIND | linux.MS_REMOUNT | flags)
    finally:
        os.close(mounted)
