"""Enter a root filesystem: namespaces, mounts, root switch, init, exec.

The process tree of one run::

    sandboxmgr (host PID namespace)          relays the tty, forwards signals
     └─ init (PID 1 of a new PID namespace)  mounts, pivot_root, reaps zombies
         └─ the command                      capabilities cut, user switched

The manager calls ``unshare(CLONE_NEWPID)`` and forks; the child is PID 1 of
the new namespace, and the manager moves itself back to its own namespace with
``setns`` so it can do the same again later. The child unshares the mount, UTS,
IPC and (with ``network: none``) network namespaces itself, so every mount of
the sandbox - the overlay root included - lives in a namespace that dies with
the sandbox: nothing can be left mounted on the host, even after ``kill -9``.

Why ``pivot_root`` and not ``chroot``: a root process inside a chroot can
``chroot`` again into a subdirectory and walk ``..`` out of it, because its
working directory is left outside the new root. After ``pivot_root`` and a
detached unmount of the old root, the host's tree is not in the mount
namespace at all. ``isolation="chroot"`` is offered as the simple alternative;
it then also drops ``CAP_SYS_CHROOT`` so that escape is closed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import stat
import struct
import sys
import termios
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, MappingProxyType

from sandboxmgr import callertty, linux
from sandboxmgr.errors import (
    EXIT_CANNOT_INVOKE,
    EXIT_MANAGER,
    EXIT_NOT_FOUND,
    CommandFailed,
    SandboxError,
)
from sandboxmgr.inroot import open_in_root
from sandboxmgr.inroot import resolve_in_root as resolve_in_root  # noqa: PLC0414 - re-exported, tests use it here
from sandboxmgr.mounts import (
    DEFAULT_MOUNTS,
    DEV_LINKS,
    DEVICES,
    NOSUID_NODEV_NOEXEC,
    BindMount,
    MountStep,
    device_steps,
    mask_steps,
    plan,
    refuse_kernel_target,
)
from sandboxmgr.record import record
from sandboxmgr.seccomp import Policy, default_policy, program

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    import socket

    from sandboxmgr.cgroups import RunCgroup
    from sandboxmgr.limits import Limits

# Docker's default capability set: enough for apt-get and dnf, not for mount,
# module loading, raw I/O, ptrace, the clock or the network configuration.
CAPABILITY_NUMBERS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
DEFAULT_CAPABILITIES = frozenset(CAPABILITY_NUMBERS.values())
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_NAME = "sandboxmgr-init"  # the sandbox's PID 1 as ps shows it (15 bytes at most)
_MAX_FD = 0x7FFFFFFF
NO_ENV: Mapping[str, str] = MappingProxyType({})  # an immutable default
DEFAULT_SECCOMP = default_policy()

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_RUNNING = 0x40
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2)


@record
class OverlayRoot:
    """A copy-on-write root: the image's read-only rootfs under a writable upper dir."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    mountpoint: Path
    # overlayfs "volatile": no sync of the whole filesystem when the sandbox ends
    # (which costs hundreds of ms while other writes are in flight). Only for an
    # upper mounted once and thrown away: an ephemeral run's. The kernel refuses to
    # mount an upper again after a volatile mount, and a crash may lose its data.
    volatile: bool = False


@record
class DirectoryRoot:
    """A root used as it is, writable (the builders' case: a rootfs being made)."""

    path: Path


@record
class EnterSpec:
    root: OverlayRoot | DirectoryRoot
    argv: tuple[str, ...] = ()  # empty: the image's shell
    env: Mapping[str, str] = NO_ENV
    workdir: str | None = None
    hostname: str = "sandbox"
    user: str | None = None
    network: str = "host"
    binds: tuple[BindMount, ...] = ()
    tty: bool = False
    isolation: str = "pivot_root"
    capabilities: frozenset[int] = DEFAULT_CAPABILITIES
    # File descriptors to give the command as stdin, stdout, stderr (default: ours).
    stdio: tuple[int, int, int] | None = None
    # Resource limits, applied with a cgroup of the run's own (see cgroups.py).
    limits: Limits | None = None
    # PR_SET_NO_NEW_PRIVS: setuid binaries and file capabilities grant nothing.
    no_new_privs: bool = True
    # The system call filter (see seccomp.py); None: none at all (seccomp=unconfined).
    seccomp: Policy | None = DEFAULT_SECCOMP
    # Where the filter's BPF is kept between runs (the store's cache); None: built each time.
    seccomp_cache: Path | None = None


def enter(spec: EnterSpec) -> int:
    """Run ``spec.argv`` in a new sandbox over ``spec.root``; return its exit status.

    Raises :class:`SandboxError` when the sandbox cannot be set up (125) and
    :class:`CommandFailed` when the command cannot be run (126, 127). When a
    limit stopped something (the OOM killer, the pids limit) one line on
    stderr says so.
    """
    for bind in spec.binds:
        refuse_kernel_target(bind.target)
        if not bind.source.exists():
            raise SandboxError(
                f"bind mount source {bind.source} does not exist",
                hint="create it first, or fix the -v SRC:DST path",
            )
    check_user(spec.user)
    # Built (or read from the cache) here, on the host: the sandbox's root may have no libseccomp.
    seccomp_program = program(spec.seccomp, spec.seccomp_cache) if spec.seccomp is not None else None
    cgroup = None
    if spec.limits is not None and not spec.limits.empty:
        from sandboxmgr.cgroups import RunCgroup  # only runs with limits pay for it

        cgroup = RunCgroup.create(spec.limits)
    try:
        status = _enter(spec, cgroup, seccomp_program)
    finally:
        if cgroup is not None:
            for left in cgroup.remove():
                print(f"sandboxmgr: warning: cannot remove the cgroup {left} (still busy); "
                      "'sandboxmgr doctor --fix' removes it", file=sys.stderr)
    return status


def _enter(spec: EnterSpec, cgroup: RunCgroup | None, seccomp_program: bytes | None) -> int:
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    # PID 1 sees this pipe hang up if the manager is already gone (see _init).
    alive_read, alive_write = os.pipe2(os.O_CLOEXEC)
    tty_parent = tty_child = None
    if spec.tty:
        import socket  # only a run with a tty passes a file descriptor

        tty_parent, tty_child = socket.socketpair()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    cgroup_fds = cgroup.open_procs() if cgroup is not None else []
    try:
        linux.unshare(linux.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            linux.setns(own_pid_ns, linux.CLONE_NEWPID)
            raise
        if pid == 0:  # pragma: no cover - runs in the sandbox's PID 1
            os.close(err_read)
            os.close(alive_write)
            if tty_parent is not None:
                tty_parent.close()
            _init(spec, err_write, tty_child, alive_read, cgroup_fds, seccomp_program)
        linux.setns(own_pid_ns, linux.CLONE_NEWPID)
    finally:
        os.close(own_pid_ns)
        for fd in cgroup_fds:
            os.close(fd)
    os.close(err_write)
    os.close(alive_read)
    # Without -t the command gets the caller's own stdin, stdout and stderr: whatever it
    # does to them (echo off, raw mode, the window size, O_NONBLOCK) is undone at the end.
    caller = None if spec.tty or spec.stdio is not None else callertty.save()
    try:
        status = _supervise(pid, err_read, tty_parent, tty_child)
    finally:
        os.close(alive_write)
        if caller is not None:
            callertty.restore(caller)
    if cgroup is not None:
        reason = cgroup.report(status)
        if reason:
            print(f"sandboxmgr: {reason}", file=sys.stderr)
    return status


def _supervise(pid: int, err_read: int, tty_parent: socket.socket | None,
               tty_child: socket.socket | None) -> int:
    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    master = None
    try:
        if tty_parent is not None and tty_child is not None:
            tty_child.close()
            import socket

            _, fds, _, _ = socket.recv_fds(tty_parent, 16, 1)
            tty_parent.close()
            master = fds[0] if fds else None
        with os.fdopen(err_read, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
        if report:
            _, status = os.waitpid(pid, 0)
            if master is not None:
                os.close(master)
            raise _report_to_error(report)
        if master is not None:
            _relay(master)
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_status(status)


def exit_status(wait_status: int) -> int:
    """A wait status as a shell would report it: the code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _report_to_error(report: str) -> SandboxError:
    code_text, _, rest = report.partition("\t")
    message, _, hint = rest.partition("\t")
    code = int(code_text) if code_text.isdigit() else EXIT_MANAGER
    if code in (EXIT_NOT_FOUND, EXIT_CANNOT_INVOKE):
        return CommandFailed(message, hint=hint or None, exit_code=code)
    return SandboxError(message, hint=hint or None, exit_code=code)


# --- the sandbox side: PID 1 --------------------------------------------------------------


def _fail(err_write: int, code: int, message: str, hint: str = "") -> None:
    try:
        os.write(err_write, f"{code}\t{message}\t{hint}".encode())
    finally:
        os._exit(code)


def _init(spec: EnterSpec, err_write: int, tty_child: socket.socket | None, alive: int,
          cgroup_fds: list[int], seccomp_program: bytes | None) -> None:
    """PID 1 of the sandbox. Never returns."""
    try:
        # If the manager dies (even by SIGKILL), PID 1 dies, and with it the
        # whole PID namespace and every mount of the sandbox. getppid() is 0
        # across a PID namespace, so a manager that died before the prctl is
        # seen as a hang-up on the pipe whose write end only it holds.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([alive], [], [], 0)[0]:
            os._exit(EXIT_MANAGER)
        os.close(alive)
        if cgroup_fds:
            # First of all, so that every mount, page and process below is counted.
            from sandboxmgr.cgroups import join

            join(cgroup_fds)
            if spec.limits is not None and spec.limits.memory is not None:
                # The OOM killer should take the command, not the init (the command
                # resets it). Lowering needs CAP_SYS_RESOURCE: without it, both stay
                # equal and the larger process - the command - goes first anyway.
                with contextlib.suppress(OSError):
                    Path("/proc/self/oom_score_adj").write_text("-999")
        _new_session_keyring()
        # How `sandboxmgr doctor` finds a sandbox whose manager died.
        linux.set_process_name(INIT_NAME)
        os.setsid()
        os.umask(0o022)
        root = _setup(spec)
        pty_number = None
        if tty_child is not None:
            pty_number = _open_pty(root, tty_child)
        _switch_root(root, spec.isolation)
        # Not dumpable: no process of the sandbox may ptrace PID 1 or open its
        # /proc/1/exe, which is the host's Python.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
    except SandboxError as exc:
        _fail(err_write, EXIT_MANAGER, exc.message, exc.hint or "")
    except Exception as exc:
        _fail(err_write, EXIT_MANAGER, f"cannot set up the sandbox: {exc}")
    child = os.fork()
    if child == 0:
        _exec(spec, err_write, pty_number, seccomp_program)
    os.close(err_write)
    _reap(child)


def _new_session_keyring() -> None:
    """A fresh, anonymous session keyring for the sandbox: the caller's session keys
    (@s, inherited through fork) are not reachable inside, and keys added there die with
    the sandbox. Root's user keyring (@u) is per uid, not per sandbox: only the seccomp
    filter (no keyctl, add_key, request_key) keeps the sandbox from it."""
    try:
        linux.join_new_session_keyring()
    except OSError as exc:
        if exc.errno != errno.ENOSYS:  # a kernel without keys has nothing to share
            raise


def _setup(spec: EnterSpec) -> Path:
    # A cgroup namespace of its own, made after the init joined the run's cgroup (if
    # any): the sandbox's view of the cgroup tree is rooted there, so neither the host's
    # cgroup paths nor any other process's cgroup can be named from inside.
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP
    if spec.network == "none":
        flags |= linux.CLONE_NEWNET
    linux.unshare(flags)
    # Nothing mounted from here on may propagate back to the host.
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    root = _mount_root(spec.root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for step in plan(spec.network, spec.binds):
            _mount_step(root_fd, step)
            if step.target == "/dev":
                _populate_dev(root_fd)
        for step in mask_steps():
            _mount_step(root_fd, step)
    finally:
        os.close(root_fd)
    linux.sethostname(spec.hostname)
    if spec.network == "none":
        _loopback_up()
    return root


def _mount_root(root: OverlayRoot | DirectoryRoot) -> Path:
    # nodev everywhere but on the device binds of /dev: see mounts.DEVICES.
    if isinstance(root, OverlayRoot):
        lowers = ":".join(str(p) for p in root.lowers)
        options = f"lowerdir={lowers},upperdir={root.upper},workdir={root.work}"
        if root.volatile:
            try:
                linux.mount("overlay", root.mountpoint, "overlay", linux.MS_NODEV, options + ",volatile")
                return root.mountpoint
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # kernels before 5.10 have no volatile: mount without it
                    raise
        linux.mount("overlay", root.mountpoint, "overlay", linux.MS_NODEV, options)
        return root.mountpoint
    # A root a bootstrap tool made: it may have left a symlink to a host directory in its place.
    if root.path.is_symlink() or not root.path.is_dir():
        raise SandboxError(f"the root being built, {root.path}, is not a directory (a symlink?)",
                           hint="something in the build replaced it; the build is refused")
    # pivot_root needs the new root to be a mount point.
    linux.mount(root.path, root.path, None, linux.MS_BIND | linux.MS_REC)
    linux.mount(None, root.path, None,
                linux.MS_BIND | linux.MS_REMOUNT | linux.mount_flags(root.path) | linux.MS_NODEV)
    return root.path


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _mount_step(root_fd: int, step: MountStep) -> None:
    if step.kind in ("mask", "readonly"):
        _protect(root_fd, step)
        return
    # The sandbox's own file systems (/proc, /dev, /tmp ...) go on real directories
    # only; what the user asked for (-v, resolv.conf) follows the image's symlinks,
    # inside the root.
    follow = step not in DEFAULT_MOUNTS
    target = open_in_root(root_fd, step.target, create=True, is_file=step.is_file, follow=follow)
    try:
        if follow and not step.device:
            # A target that is spelled harmlessly but is a symlink in the image into
            # /proc, /sys or /dev is refused like one spelled so (mounts.refuse_kernel_target).
            root = os.readlink(_fd_path(root_fd))
            refuse_kernel_target(step.target, "/" + os.path.relpath(os.readlink(_fd_path(target)), root))
        if step.fstype is not None:
            try:
                linux.mount(step.source, _fd_path(target), step.fstype, step.flags, step.data)
            except OSError as exc:  # kernels before 5.10 have no volatile overlay: mount without it
                if exc.errno != errno.EINVAL or not (step.data or "").endswith(",volatile"):
                    raise
                linux.mount(step.source, _fd_path(target), step.fstype, step.flags,
                            (step.data or "").removesuffix(",volatile"))
            return
        source = os.stat(step.source)
        linux.mount(step.source, _fd_path(target), None, linux.MS_BIND | linux.MS_REC)
    finally:
        os.close(target)
    # A bind remount replaces every per-mount flag: keep the source's, add nodev
    # (see mounts.DEVICES) and ro. The path is opened again: the new mount is on top.
    mounted = open_in_root(root_fd, step.target, follow=follow)
    try:
        now = os.fstat(mounted)
        if (now.st_dev, now.st_ino) != (source.st_dev, source.st_ino):
            raise SandboxError(f"the bind mount on {step.target} is not {step.source} after mounting it",
                               hint="something changed the sandbox's root while it was set up; try again")
        flags = linux.mount_flags(mounted) | (0 if step.device else linux.MS_NODEV)
        flags |= linux.MS_RDONLY if step.readonly else 0
        linux.mount(None, _fd_path(mounted), None, linux.MS_BIND | linux.MS_REMOUNT | flags)
    finally:
        os.close(mounted)


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
            linux.mount("tmpfs", _fd_path(target), "tmpfs",
                        linux.MS_RDONLY | NOSUID_NODEV_NOEXEC, "mode=0555")
            return
        source = step.source if step.kind == "mask" else _fd_path(target)
        linux.mount(source, _fd_path(target), None, linux.MS_BIND | linux.MS_REC)
    finally:
        os.close(target)
    mounted = open_in_root(root_fd, step.target, follow=False)
    try:
        # A masked file reads as empty, as under runc: /dev/null's bind keeps its dev.
        keep_dev = linux.MS_NODEV if step.kind == "readonly" else 0
        flags = linux.mount_flags(mounted) | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NOEXEC | keep_dev
        linux.mount(None, _fd_path(mounted), None, linux.MS_BIND | linux.MS_REMOUNT | flags)
    finally:
        os.close(mounted)


def _populate_dev(root_fd: int) -> None:
    """Bind the host's device nodes (read-only: the sandbox's root may not chmod the
    host's /dev/null) into the fresh /dev, and add the usual links."""
    for device, step in zip(DEVICES, device_steps(), strict=True):
        info = os.stat(step.source)
        if not stat.S_ISCHR(info.st_mode) or info.st_rdev != os.makedev(device.major, device.minor):
            raise SandboxError(f"the host's {step.source} is not the {device.name} device "
                               f"({device.major}:{device.minor})", hint=f"restore {step.source} on the host")
        _mount_step(root_fd, step)
    dev = open_in_root(root_fd, "/dev", follow=False)
    try:
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)


def _loopback_up() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING)
        fcntl.ioctl(sock, _SIOCSIFFLAGS, request)


def _open_pty(root: Path, tty_child: socket.socket) -> int:
    """Make a pty in the sandbox's own devpts; hand the master to the manager."""
    master = os.open(root / "dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
    import socket

    socket.send_fds(tty_child, [b"m"], [master])
    tty_child.close()
    os.close(master)
    return int(number)


def _switch_root(root: Path, isolation: str) -> None:
    os.chdir(root)
    if isolation == "chroot":
        os.chroot(".")
    else:
        # pivot_root(".", ".") stacks the old root on top of the new one;
        # the detached unmount then removes the host's tree from this namespace.
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)
    os.chdir("/")


def _reap(child: int) -> None:
    """Forward signals to the command, reap every orphan, exit with the command's status."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    status = 0
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == child:
            status = exit_status(wait_status)
            break
    # Leaving PID 1 makes the kernel kill whatever else is left in the namespace.
    os._exit(status)


# --- the command ------------------------------------------------------------------------


@record
class _User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_table(path: str) -> list[list[str]]:
    try:
        with open(path) as handle:
            return [line.rstrip("\n").split(":") for line in handle if line.count(":") >= 2]
    except OSError:
        return []


# The largest uid and gid: (uid_t)-1 means "unchanged" to the set*id calls.
MAX_ID = 0xFFFFFFFE


def check_user(spec: str | None) -> None:
    """Refuse a numeric uid or gid the kernel cannot take (``-u 4294967295``, ``-u -1``),
    before anything is set up. Names are looked up inside the sandbox later."""
    if not spec:
        return
    for part, what in zip(spec.partition(":")[::2], ("uid", "gid"), strict=True):
        negative = part.startswith("-") and part[1:].isdigit()
        if negative or (part.isdigit() and int(part) > MAX_ID):
            raise SandboxError(f"user {spec}: {part} is not a valid {what} (0 to {MAX_ID})",
                               hint="give -u (or the profile's user:) a name, or a number from 0 to 4294967294")


def lookup_user(spec: str | None, passwd: str = "/etc/passwd", group: str = "/etc/group") -> _User:  # noqa: S107
    """``user[:group]`` (names or numbers) in the sandbox's own user database."""
    if spec is None or spec == "":
        spec = "0"
    user_part, _, group_part = spec.partition(":")
    users = [row for row in _read_table(passwd) if len(row) >= 7]
    entry = None
    for row in users:
        if row[0] == user_part or (user_part.isdigit() and row[2] == user_part):
            entry = row
            break
    if entry is None and not user_part.isdigit():
        raise SandboxError(f"no user {user_part!r} in the sandbox's /etc/passwd",
                           hint="create it in the profile's setup (useradd), or give a numeric uid")
    uid = int(entry[2]) if entry else int(user_part)
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else "/"
    groups_table = [row for row in _read_table(group) if len(row) >= 4]
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = [row for row in groups_table if row[0] == group_part]
            if not match:
                raise SandboxError(f"no group {group_part!r} in the sandbox's /etc/group",
                                   hint="give a numeric gid or create the group in setup")
            gid = int(match[0][2])
    name = entry[0] if entry else None
    extra = tuple(int(row[2]) for row in groups_table
                  if name is not None and name in row[3].split(",") and int(row[2]) != gid)
    return _User(uid, gid, extra, home)


def _exec(spec: EnterSpec, err_write: int, pty_number: int | None, seccomp_program: bytes | None) -> None:
    """The command's process: session, tty, capabilities, user, exec. Never returns."""
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        if spec.stdio is not None:
            for target, fd in enumerate(spec.stdio):
                os.dup2(fd, target)
        if pty_number is not None:
            slave = os.open(f"/dev/pts/{pty_number}", os.O_RDWR)
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            if slave > 2:
                os.close(slave)
        # Only stdin, stdout and stderr cross into the sandbox (close_range(2) makes
        # the whole range one syscall); err_write is close-on-exec.
        os.closerange(3, err_write)
        os.closerange(err_write + 1, _MAX_FD)
        if spec.limits is not None and spec.limits.memory is not None:
            with contextlib.suppress(OSError):
                Path("/proc/self/oom_score_adj").write_text("0")
        user = lookup_user(spec.user)
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", user.home)
        if pty_number is not None:
            env.setdefault("TERM", os.environ.get("TERM", "xterm"))
        workdir = spec.workdir or "/"
        os.makedirs(workdir, exist_ok=True)
        capabilities = spec.capabilities
        if spec.isolation == "chroot":
            capabilities = capabilities - {CAPABILITY_NUMBERS["SYS_CHROOT"]}
        if seccomp_program is not None and not spec.no_new_privs:
            # Without no_new_privs the kernel takes a filter only from a process with
            # CAP_SYS_ADMIN: so it goes in now, before the capabilities are cut. What
            # follows (prctl, capset, set*id, chdir, execve) is allowed by the default.
            linux.set_seccomp_filter(seccomp_program)
        linux.limit_capabilities(capabilities)
        if user.uid != 0 or user.gid != 0:
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
        if spec.no_new_privs:
            # Nothing the command executes gains privileges: setuid bits and file
            # capabilities are ignored, and no capability comes back with exec.
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
        os.chdir(workdir)
        argv = list(spec.argv) or [_default_shell()]
        if seccomp_program is not None and spec.no_new_privs:
            # Last, as late as possible: the filter binds only what the command does.
            linux.set_seccomp_filter(seccomp_program)
    except SandboxError as exc:
        _fail(err_write, EXIT_MANAGER, exc.message, exc.hint or "")
        return
    except Exception as exc:
        _fail(err_write, EXIT_MANAGER, f"cannot start the command: {exc}")
        return
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        _fail(err_write, EXIT_NOT_FOUND, f"{argv[0]}: command not found in the sandbox",
              "install it through the profile's packages, or give the full path")
    except OSError as exc:
        _fail(err_write, EXIT_CANNOT_INVOKE, f"{argv[0]}: cannot run: {exc.strerror}",
              "check that it is an executable file for this architecture")


def _default_shell() -> str:
    return "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"


# --- the manager side of a tty ------------------------------------------------------------


def _copy_winsize(master: int) -> None:
    for fd in (0, 1, 2):
        if os.isatty(fd):
            size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            return


def _write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _relay(master: int) -> None:
    """Copy between our stdin/stdout and the sandbox's pty until the sandbox closes it."""
    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        mode = termios.tcgetattr(0)
        # Raw mode: every key, Ctrl-C included, goes to the sandbox's terminal.
        mode[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
        mode[1] &= ~termios.OPOST
        mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        mode[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        termios.tcsetattr(0, termios.TCSAFLUSH, mode)
    _copy_winsize(master)
    previous = signal.signal(signal.SIGWINCH, lambda _s, _f: _copy_winsize(master))
    sources = [master, 0]
    try:
        while True:
            ready, _, _ = select.select(sources, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:
                    if exc.errno == errno.EIO:  # every end of the pty in the sandbox is closed
                        break
                    raise
                if not data:
                    break
                _write_all(sys.stdout.fileno(), data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write_all(master, data)
                else:
                    sources.remove(0)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        os.close(master)
