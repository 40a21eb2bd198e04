"""The root a host-side build tool runs in: the host's tree out of its reach.

debootstrap, mmdebstrap and the host's dnf run the maintainer scripts (or rpm
scriptlets) of the packages they install, as root, chrooted into the new root.
In the host's mount namespace such a script reaches the host through
``/proc/1/root`` or a second chroot. So the tool runs in a mount namespace of its
own whose root is this tool root, made fresh for each run:

- a tmpfs, with the host's ``/usr`` and ``/etc`` bound read-only, nosuid and
  nodev (the programs and their configuration), and the host's secrets in
  ``/etc`` (shadow, ssh host keys, TLS private keys, sudoers) masked;
- the build's own tmp/ directory, read-write (the new root, the staged
  packages, the tool's scratch), and what the profile names for reading (its
  keyring, a ``file://`` mirror), read-only;
- a fresh ``/dev`` with null, zero, full, random, urandom and tty; an empty
  ``/tmp`` and ``/run``; ``/proc`` mounted by the tool's PID namespace's own
  ``unshare --mount-proc``, so ``/proc/1/root`` is this root, not the host's.

The old root is detached after ``pivot_root``: nothing else of the host is in the
namespace. The tool keeps the capabilities it needs to build a root (mounting
/proc in the target among them) and loses the rest (``TOOL_CAPABILITIES``).
What this does not stop - a script that uses CAP_SYS_ADMIN to remount what is
read-only - the README's security model says; only packages verified against
the signed index (debcache.py) reach a Debian bootstrap.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr import linux
from sandboxmgr.mounts import DEVICES, HOST_DEV, NOSUID_NODEV, NOSUID_NODEV_NOEXEC

# What a bootstrap needs: files of any owner (CHOWN, DAC_OVERRIDE, FOWNER, FSETID,
# SETFCAP), users (SETUID, SETGID, SETPCAP), chroot, device nodes in the new root's
# /dev (MKNOD: debootstrap makes them), mounts of /proc and /sys there (SYS_ADMIN),
# signals to its own processes (KILL). Not: modules, raw I/O, ptrace, the clock,
# open_by_handle_at (DAC_READ_SEARCH), the network's configuration, BPF, resources.
TOOL_CAPABILITIES = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 18, 21, 27, 29, 31})
# Files and directories of /etc that hold secrets no build tool needs.
MASKED_ETC = ("shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl/private",
              "security/opasswd", "machine-id", "credstore", "credstore.encrypted")
_HOST_DIRS = ("usr", "etc")
_TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class ToolRoot:
    """Where the tool root is made (``place``, a directory of the build's own that is
    also bound read-write), and host paths the tool must read."""

    place: Path
    readable: tuple[Path, ...] = ()

    @property
    def mountpoint(self) -> Path:
        return self.place / "tool-root"


def _bind(source: str | Path, target: Path, flags: int) -> None:
    linux.mount(source, target, None, linux.MS_BIND | linux.MS_REC)
    linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | linux.mount_flags(target) | flags)


def _make(target: Path, like: Path) -> None:
    """A mount point for ``like`` at ``target``: a directory or an empty file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if like.is_dir():
        target.mkdir(exist_ok=True)
    else:
        target.touch(exist_ok=True)


def enter(tool_root: ToolRoot) -> None:  # pragma: no cover - runs between fork and exec
    """Make the tool root and switch to it (in a fresh, private mount namespace)."""
    root = tool_root.mountpoint
    root.mkdir(exist_ok=True)
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=0755")
    for name in _HOST_DIRS:
        (root / name).mkdir()
        _bind(f"/{name}", root / name, linux.MS_RDONLY | NOSUID_NODEV)
    for name in _TOP_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            (root / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            (root / name).mkdir()
            _bind(host, root / name, linux.MS_RDONLY | NOSUID_NODEV)
    for secret in MASKED_ETC:
        target = root / "etc" / secret
        if not os.path.lexists(target) or target.is_symlink():
            continue
        if target.is_dir():
            linux.mount("tmpfs", target, "tmpfs", linux.MS_RDONLY | NOSUID_NODEV_NOEXEC, "mode=0555")
        else:
            linux.mount("/dev/null", target, None, linux.MS_BIND)
    for name, mode in (("tmp", "1777"), ("run", "0755"), ("root", "0700"), ("var", "0755")):
        (root / name).mkdir()
        linux.mount("tmpfs", root / name, "tmpfs", NOSUID_NODEV, f"mode={mode}")
    (root / "var" / "tmp").mkdir(mode=0o1777)
    _make_dev(root / "dev")
    (root / "proc").mkdir()
    (root / "sys").mkdir()
    for path in tool_root.readable:
        if path.parts[1:2] and path.parts[1] in _HOST_DIRS:
            continue  # under /usr or /etc: there already
        if path.exists():
            _make(root / str(path).lstrip("/"), path)
            _bind(path, root / str(path).lstrip("/"), linux.MS_RDONLY | NOSUID_NODEV)
    place = root / str(tool_root.place).lstrip("/")
    place.mkdir(parents=True, exist_ok=True)
    # Not nodev: debootstrap makes the new root's device nodes there, and must open them.
    _bind(tool_root.place, place, linux.MS_NOSUID)
    linux.umount2(place / tool_root.mountpoint.name, linux.MNT_DETACH)  # the tool root itself, seen again
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


def _make_dev(dev: Path) -> None:  # pragma: no cover - runs between fork and exec
    dev.mkdir()
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755")
    for device in DEVICES:
        (dev / device.name).touch()
        linux.mount(HOST_DEV / device.name, dev / device.name, None, linux.MS_BIND)
    (dev / "pts").mkdir()
    linux.mount("devpts", dev / "pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620")
    (dev / "shm").mkdir()
    linux.mount("tmpfs", dev / "shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        with contextlib.suppress(FileExistsError):
            (dev / name).symlink_to(target)
