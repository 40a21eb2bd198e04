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
import select
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr import linux, mountinfo
from sandboxmgr.commands import PreMount
from sandboxmgr.errors import SandboxError
from sandboxmgr.libseccomp import program
from sandboxmgr.mounts import NOSUID_NODEV, NOSUID_NODEV_NOEXEC, device_steps, link_steps, mask_steps
from sandboxmgr.pid1 import exit_status
from sandboxmgr.seccomp import default_policy
from sandboxmgr.userns import entered

# What a bootstrap needs: files of any owner (CHOWN, DAC_OVERRIDE, FOWNER, FSETID,
# SETFCAP), users (SETUID, SETGID, SETPCAP), chroot, signals to its own processes
# (KILL). Not: mounting (SYS_ADMIN: /proc and /dev of the new root are mounted for
# the tool), device nodes (MKNOD), modules, raw I/O, ptrace, the clock,
# open_by_handle_at (DAC_READ_SEARCH), the network's configuration, BPF, resources.
TOOL_CAPABILITIES = frozenset({0, 1, 3, 4, 5, 6, 7, 8, 18, 29, 31})
# Files and directories of /etc that hold secrets no build tool needs.
# (A deny list: the README says so. A tool needs much of /etc - ld.so.cache, alternatives,
# resolv.conf, ssl/certs, passwd - and what it needs differs between distributions.)
MASKED_ETC = ("shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl/private",
              "security/opasswd", "machine-id", "credstore", "credstore.encrypted", "wireguard",
              "NetworkManager/system-connections", "krb5.keytab", "letsencrypt", "pki/tls/private",
              "ipsec.secrets", "ipsec.d/private", "ppp/chap-secrets", "ppp/pap-secrets", "openvpn",
              "postgresql", "mysql/debian.cnf", "docker/key.json", "restic", "sandboxmgr")
_HOST_DIRS = ("usr", "etc")
_MAX_FD = 0x7FFFFFFF
HOST_PROC = "/.host-proc"
_TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class ToolRoot:
    """A tool root made at ``place`` (a directory of the build's own), showing the tool the
    directories of ``shared`` read-write (each a mount point there: the tool can change
    what is in them, never replace them with a symlink) and host paths it must read.
    Nothing else of ``place`` is shown: what the host makes there after the tool has run
    (a build step's overlay directories) is out of the tool's reach."""

    place: Path
    shared: tuple[Path, ...]
    readable: tuple[Path, ...] = ()
    # The new root the tool makes: /proc and /dev are mounted there for it (as the tool
    # would do itself), so the tool runs without the right to mount anything.
    target: Path | None = None

    def __post_init__(self) -> None:
        for path in self.readable:
            check_readable(path, self.place)

    @property
    def mountpoint(self) -> Path:
        return self.place / "tool-root"

    def preexec(self, mounts: Sequence[PreMount]) -> Callable[[], None]:
        """What the tool's child does between fork and exec (commands.run): its own mount
        namespace, ``mounts`` made there, then this root (:func:`enter`)."""
        # Built here, in the parent: the child only loads it (it may not import anything).
        seccomp_program = program(default_policy(), None)

        def child() -> None:  # pragma: no cover - runs between fork and exec
            # Dies with the manager; a private mount namespace, so what we mount for the
            # command vanishes with it, even after kill -9.
            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            linux.unshare(linux.CLONE_NEWNS)
            linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
            for mount in mounts:
                flags = linux.MS_BIND if mount.fstype is None else 0
                linux.mount(mount.source, mount.target, mount.fstype, flags, mount.data)
            enter(self, seccomp_program)

        return child


# Host paths a profile may not show to a bootstrap tool: the kernel's, the boot files, and
# the directories whose whole content is the host's (a mirror belongs in a directory of its own).
_REFUSED_TOPS = {"proc", "sys", "dev", "run", "boot", "root", "home", "var", "tmp", "srv", "opt", "mnt", "media"}


def check_readable(path: Path, place: Path) -> None:
    """Refuse to show ``path`` (a profile's keyring, a file:// mirror) to the tool when it is
    the host's tree or a large part of it: ``/``, a top directory, one of the kernel's, or
    one holding the store."""
    resolved = Path(os.path.realpath(path))
    place = Path(os.path.realpath(place))  # a store reached through a symlink, too
    parts = resolved.parts
    too_wide = resolved.is_dir() and (len(parts) < 3 or (len(parts) == 3 and parts[1] in _REFUSED_TOPS))
    if too_wide or parts[1:2] in (("proc",), ("sys",), ("dev",)) or \
            os.path.commonpath([resolved, place]) == str(resolved):
        raise SandboxError(f"{path} is too much of the host to show to the bootstrap tool "
                           "(a keyring or file:// mirror may not be /, a top directory, /proc, /sys, /dev, "
                           "or hold the store)",
                           hint="point it at a directory or file of its own, like /srv/mirror/debian")


def _bind(source: str | Path, target: Path, flags: int, recursive: bool = True) -> None:
    """A bind mount with ``flags`` (MS_RDONLY, MS_NOSUID ...) on it and on every mount below it:
    a remount changes one mount only, and a host's /etc may have files bound over it."""
    linux.mount(source, target, None, linux.MS_BIND | (linux.MS_REC if recursive else 0))
    below = sorted(mountinfo.mounts_under(target), key=len) if recursive else [str(target)]
    for point in below:
        try:
            linux.mount(None, point, None, linux.MS_BIND | linux.MS_REMOUNT | linux.mount_flags(point) | flags)
        except OSError:
            if point == str(target):
                raise
            linux.umount2(point, linux.MNT_DETACH)  # what cannot be made read-only is not shown


def shown_once(paths: Sequence[Path]) -> list[Path]:
    """``paths`` to bind read-only, each once, none inside another (two repositories with one
    key file, a key inside its file:// repository): a mount point made again inside a read-only
    bind fails."""
    shown: list[Path] = []
    for path in sorted(set(paths), key=lambda p: (len(p.parts), p)):
        if not any(path.is_relative_to(done) for done in shown):
            shown.append(path)
    return shown


def _make(target: Path, like: Path) -> None:
    """A mount point for ``like`` at ``target``: a directory or an empty file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if like.is_dir():
        target.mkdir(exist_ok=True)
    else:
        target.touch(exist_ok=True)


def enter(tool_root: ToolRoot, seccomp_program: bytes | None) -> None:  # pragma: no cover - after fork
    """Make the tool root, switch to it (in a fresh, private mount namespace), and become
    PID 1 of a new PID namespace with its own /proc and only TOOL_CAPABILITIES.

    The calling process stays outside as the namespace's parent: it waits for PID 1 and
    exits with its status (so the caller's wait is the tool's), and PID 1 dies with it."""
    _switch(tool_root)
    linux.unshare(linux.CLONE_NEWPID)
    hangup_read, hangup_write = os.pipe()
    child = os.fork()
    if child != 0:
        os.close(hangup_read)
        _wait_for(child, keep=hangup_write)
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.close(hangup_write)
    if select.select([hangup_read], [], [], 0)[0]:
        os._exit(1)  # the parent died before PDEATHSIG was set
    os.close(hangup_read)
    _mount_proc(Path("/proc"))
    if tool_root.target is not None:
        _prepare_target(tool_root.target)
    if entered():
        linux.umount2(HOST_PROC, linux.MNT_DETACH)  # see _switch
        os.rmdir(HOST_PROC)
    # No keyring of the caller's (its session's keys, root's user keyring): a fresh session
    # keyring, and the sandboxes' system call filter, which denies the keyring calls, user
    # namespaces and the rest. Loaded while CAP_SYS_ADMIN allows it without no_new_privs
    # (a bootstrap runs setuid programs: apt's sandbox user); the calls after it are allowed.
    linux.join_new_session_keyring()
    if seccomp_program is not None:
        linux.set_seccomp_filter(seccomp_program)
    # Last: mounting needed CAP_SYS_ADMIN.
    linux.limit_capabilities(TOOL_CAPABILITIES)


def _wait_for(child: int, keep: int) -> None:  # pragma: no cover - runs between fork and exec
    # Every other descriptor closed, among them the subprocess module's error pipe: the
    # caller learns of the exec (or its failure) from PID 1's copy.
    os.closerange(3, keep)
    os.closerange(keep + 1, _MAX_FD)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    os._exit(exit_status(status))


def _mount_proc(proc: Path) -> None:  # pragma: no cover - runs between fork and exec
    """A /proc of this PID namespace, with what runc hides of it hidden and its knobs read-only."""
    proc.mkdir(exist_ok=True)
    linux.mount("proc", proc, "proc", NOSUID_NODEV_NOEXEC)
    # The sandboxes' masks of /proc (mounts.mask_steps), in the same order: masks, then read-only.
    for step in mask_steps():
        if not step.target.startswith("/proc/"):
            continue
        target = proc / step.target[len("/proc/"):]
        if step.kind == "readonly":
            if target.exists():
                _bind(target, target, linux.MS_RDONLY | NOSUID_NODEV_NOEXEC)
        elif target.is_dir():
            linux.mount("tmpfs", target, "tmpfs", linux.MS_RDONLY | NOSUID_NODEV_NOEXEC, "mode=0555")
        elif target.exists():
            _bind(step.source, target, linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC, recursive=False)


def _prepare_target(target: Path) -> None:  # pragma: no cover - runs between fork and exec
    """/proc and a minimal /dev in the new root, for its maintainer scripts."""
    target.mkdir(exist_ok=True)
    if not entered():
        # In a user namespace a proc's root is the host root's (nobody inside): the tool's tar
        # cannot set ./proc's owner and times on it, so a rootless bootstrap runs without one.
        _mount_proc(target / "proc")
    (target / "dev").mkdir(exist_ok=True)
    _make_dev(target / "dev", links=False)


def _switch(tool_root: ToolRoot) -> None:  # pragma: no cover - runs between fork and exec
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
            _bind("/dev/null", target, linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC, recursive=False)
    for name, mode in (("tmp", "1777"), ("run", "0755"), ("root", "0700"), ("var", "0755")):
        (root / name).mkdir()
        linux.mount("tmpfs", root / name, "tmpfs", NOSUID_NODEV, f"mode={mode}")
    (root / "var" / "tmp").mkdir(mode=0o1777)
    _make_dev(root / "dev")
    (root / "sys").mkdir()
    if entered():
        # In a user namespace the kernel mounts a proc only where one is fully visible already
        # (mount_too_revealing): the host's, shown until the tool's own are mounted (enter).
        # With what is mounted on it (binfmt_misc, on every systemd host): a mount with locked
        # submounts cannot be bound alone in a user namespace (EINVAL).
        (root / HOST_PROC.lstrip("/")).mkdir()
        _bind("/proc", root / HOST_PROC.lstrip("/"), NOSUID_NODEV_NOEXEC)
    for path in shown_once(tool_root.readable):
        if path.parts[1:2] and path.parts[1] in _HOST_DIRS:
            continue  # under /usr or /etc: there already
        if path.exists():
            # Only that mount: nothing mounted below it on the host comes along.
            _make(root / str(path).lstrip("/"), path)
            _bind(path, root / str(path).lstrip("/"), linux.MS_RDONLY | NOSUID_NODEV_NOEXEC, recursive=False)
    for shared in tool_root.shared:
        inside = root / str(shared).lstrip("/")
        inside.mkdir(parents=True, exist_ok=True)
        _bind(shared, inside, NOSUID_NODEV)
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


def _make_dev(dev: Path, links: bool = True) -> None:  # pragma: no cover - runs between fork and exec
    dev.mkdir(exist_ok=True)
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC, "mode=0755")
    for step in device_steps():
        # Read-only: the node is the host's own inode (no chmod of the host's /dev/null).
        node = dev / step.target.removeprefix("/dev/")
        node.touch()
        _bind(step.source, node, linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC, recursive=False)
    (dev / "pts").mkdir()
    linux.mount("devpts", dev / "pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=0620")
    (dev / "shm").mkdir()
    linux.mount("tmpfs", dev / "shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777")
    if not links:
        return  # the tool makes them
    for step in link_steps():
        with contextlib.suppress(FileExistsError):
            (dev / step.target.removeprefix("/dev/")).symlink_to(step.source)
