"""Thin ctypes layer over the Linux syscalls Python 3.11 does not expose.

Every wrapper raises :class:`OSError` with errno and a message that names the
call and its arguments, so a failed mount reads as
``mount('overlay', '/x', 'overlay') failed: No such file or directory``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from pathlib import Path

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# <linux/openat2.h>
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10

# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# pivot_root has no libc wrapper in glibc < 2.36; its number differs by arch.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
# clone(2) (as fork, with namespace flags): the child's stack and the tid and tls pointers unused.
_SYS_CLONE = {"x86_64": 56, "aarch64": 220, "ppc64le": 120, "s390x": 120, "riscv64": 220}
_SIGCHLD = 17
# openat2 (Linux 5.6) is one of the syscalls numbered alike on every architecture.
_SYS_OPENAT2 = 437

_libc = ctypes.CDLL(None, use_errno=True)
_pylibc = ctypes.PyDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")
    return result


def _b(path: str | Path | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns({fd}, {nstype:#x})")


def fork_in_new_pid_namespace() -> int:
    """fork(2) whose child is PID 1 of a new PID namespace (clone with CLONE_NEWPID), for a
    process that may not setns() back into its own PID namespace after unshare(CLONE_NEWPID):
    one in a user namespace, whose PID namespace the host's user namespace owns.
    Python's own before/after-fork steps run around it, as os.fork() runs them. glibc's cached
    thread id stays the parent's in the child (so raise() would miss it): the child here only
    mounts, forks (glibc's fork sets the grandchild's right), waits and exits."""
    number = _SYS_CLONE.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"clone: unknown syscall number on {os.uname().machine}")
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    # The GIL stays held through the call (PyDLL), so the child's copy of it is its own.
    pid = _pylibc.syscall(ctypes.c_long(number), ctypes.c_ulong(CLONE_NEWPID | _SIGCHLD), None, None, None, None)
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone(CLONE_NEWPID) failed: {os.strerror(err)}")
    return int(pid)


def mount(
    source: str | Path | None,
    target: str | Path,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    result = _libc.mount(
        _b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)
    )
    _check(result, f"mount({str(source)!r}, {str(target)!r}, {fstype!r}, {flags:#x}, {data!r})")


# The new mount API (Linux 5.2; mount_setattr 5.12): numbered alike on every architecture.
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def idmap_over(directory: int, userns_fd: int) -> None:
    """Mount over the directory open at ``directory`` an idmapped clone of itself: its files'
    owners seen through the map of the user namespace ``userns_fd`` (open_tree, mount_setattr,
    move_mount, as podman's idmapped layers). In the caller's mount namespace only."""
    flags = OPEN_TREE_CLONE | AT_EMPTY_PATH | os.O_CLOEXEC
    tree = _check(_libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(directory), b"",
                                ctypes.c_uint(flags)), "open_tree(OPEN_TREE_CLONE)")
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(tree), b"",
                             ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
               "mount_setattr(MOUNT_ATTR_IDMAP)")
        _check(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree), b"", ctypes.c_int(directory), b"",
                             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)), "move_mount")
    finally:
        os.close(tree)


def sethostname(name: str) -> None:
    """The host name of the calling process's UTS namespace (socket.sethostname, without socket)."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name!r})")


def umount2(target: str | Path, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount2({str(target)!r}, {flags})")


def pivot_root(new_root: str | Path, put_old: str | Path) -> None:
    machine = os.uname().machine  # platform.machine(), without platform's import cost
    number = _SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {machine}")
    result = _libc.syscall(ctypes.c_long(number), _b(new_root), _b(put_old))
    _check(result, f"pivot_root({str(new_root)!r}, {str(put_old)!r})")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open ``path`` relative to ``dir_fd`` under the ``RESOLVE_*`` rules.

    Raises ``OSError(ENOSYS)`` on kernels before 5.6 (callers fall back to a
    component walk); ``EAGAIN`` (a concurrent rename during ``RESOLVE_IN_ROOT``)
    is retried here.
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(16):
        result = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), _b(path),
                               ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if result >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    return _check(result, f"openat2({dir_fd}, {path!r}, {flags:#x}, resolve={resolve:#x})")


def set_process_name(name: str) -> None:
    """The name ``ps`` shows (``/proc/PID/comm``, 15 bytes at most)."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(ctypes.c_int(PR_SET_NAME), buffer, ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl(PR_SET_NAME, {name!r})")


def set_command_line(text: str) -> None:
    """What ``/proc/PID/cmdline`` shows (``ps`` with arguments): ``text`` instead of the
    interpreter's path and its arguments. The process's own argument area is overwritten
    in place (prctl's PR_SET_MM would move it, but needs CAP_SYS_RESOURCE, which not every
    root has); what does not fit is cut, the rest zeroed."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # Fields 48 and 49 of stat(5), counted from the state (field 3) after the command name.
    arg_start, arg_end = int(fields[45]), int(fields[46])
    size = arg_end - arg_start
    if size <= 0:
        return
    data = text.encode()[: size - 1].ljust(size, b"\0")
    ctypes.memmove(arg_start, data, size)


# statvfs's ST_* flags -> the MS_* flags a bind remount must repeat to keep them.
_KEPT_MOUNT_FLAGS = (
    (os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)


def mount_flags(path: str | Path | int) -> int:
    """The per-mount flags of the mount holding ``path`` (or an open fd), as MS_* flags.

    A bind remount (``MS_BIND | MS_REMOUNT``) replaces every per-mount flag, so
    adding one (``MS_RDONLY``, ``MS_NODEV``) must repeat the ones already set.
    """
    found = os.statvfs(path).f_flag
    return sum(ms for st, ms in _KEPT_MOUNT_FLAGS if found & st)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option}, {arg2})")


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as last:
        return int(last.read())


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def limit_capabilities(keep: frozenset[int]) -> None:
    """Cut the bounding, ambient, effective, permitted and inheritable sets to ``keep``.

    The bounding set is what matters across ``execve`` for root: a root process's
    new permitted set is its bounding set, so dropping there is permanent.
    """
    for cap in range(last_cap() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)
    with contextlib.suppress(OSError):  # kernels before 4.3 have no ambient set
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = word
        data[i].permitted = word
        data[i].inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset()")


# <linux/seccomp.h>
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_seccomp_filter(program: bytes) -> None:
    """Install a BPF filter (``struct sock_filter`` array, as libseccomp exports it) on
    the calling thread; it is inherited by children and kept across execve. Needs
    no_new_privs or CAP_SYS_ADMIN."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                       ctypes.c_void_p(ctypes.addressof(fprog)), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           f"loading the seccomp filter ({len(program) // 8} instructions)")


# <linux/keyctl.h>
KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "ppc64le": 280, "s390x": 280, "riscv64": 219}


def join_new_session_keyring() -> None:
    """Give the calling process a new, anonymous session keyring (its children inherit it):
    the keys of the caller's session are no longer reachable through @s. A kernel without
    keys (ENOSYS) has nothing to share: that is no error."""
    machine = os.uname().machine
    number = _SYS_KEYCTL.get(machine)
    if number is None:
        return  # as ENOSYS: no keyring this code knows how to reach
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None))
    if result < 0 and ctypes.get_errno() == errno.ENOSYS:
        return
    _check(result, "keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)")


# <linux/sockios.h>, <net/if.h>
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_RUNNING = 0x40


def loopback_up() -> None:
    """Bring up ``lo`` in the calling process's network namespace (a new one has it down)."""
    import fcntl
    import socket  # only a run with network none pays for it
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING)
        fcntl.ioctl(sock, _SIOCSIFFLAGS, request)


def regular_bytes(path: str | Path, limit: int, follow: bool = True) -> tuple[int, bytes | None]:
    """(``path``'s st_mode, at most ``limit`` + 1 of its bytes, or None when it is not a regular
    file); OSError as open(2) gives it. Anything but a regular file is never opened, only looked
    at: opening a device acts (a watchdog is armed, a tape rewinds) and wakes a FIFO's writer.
    ``follow=False``: a symlink is not followed, and its mode is S_IFLNK."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return mode, None
        with open(f"/proc/self/fd/{fd}", "rb") as handle:
            return mode, handle.read(limit + 1)
    finally:
        os.close(fd)
