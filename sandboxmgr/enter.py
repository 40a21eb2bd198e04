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
import socket
import stat
import struct
import sys
import termios
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from sandboxmgr import linux
from sandboxmgr.errors import (
    EXIT_CANNOT_INVOKE,
    EXIT_MANAGER,
    EXIT_NOT_FOUND,
    CommandFailed,
    SandboxError,
)
from sandboxmgr.mounts import DEV_LINKS, DEVICES, BindMount, MountStep, plan

# Docker's default capability set: enough for apt-get and dnf, not for mount,
# module loading, raw I/O, ptrace, the clock or the network configuration.
CAPABILITY_NUMBERS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}
DEFAULT_CAPABILITIES = frozenset(CAPABILITY_NUMBERS.values())
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_RUNNING = 0x40
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class OverlayRoot:
    """A copy-on-write root: the image's read-only rootfs under a writable upper dir."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    mountpoint: Path


@dataclass(frozen=True)
class DirectoryRoot:
    """A root used as it is, writable (the builders' case: a rootfs being made)."""

    path: Path


@dataclass(frozen=True)
class EnterSpec:
    root: OverlayRoot | DirectoryRoot
    argv: tuple[str, ...] = ()  # empty: the image's shell
    env: Mapping[str, str] = field(default_factory=dict)
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


def enter(spec: EnterSpec) -> int:
    """Run ``spec.argv`` in a new sandbox over ``spec.root``; return its exit status.

    Raises :class:`SandboxError` when the sandbox cannot be set up (125) and
    :class:`CommandFailed` when the command cannot be run (126, 127).
    """
    for bind in spec.binds:
        if not bind.source.exists():
            raise SandboxError(
                f"bind mount source {bind.source} does not exist",
                hint="create it first, or fix the -v SRC:DST path",
            )
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    # PID 1 sees this pipe hang up if the manager is already gone (see _init).
    alive_read, alive_write = os.pipe2(os.O_CLOEXEC)
    tty_parent, tty_child = socket.socketpair() if spec.tty else (None, None)
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
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
            _init(spec, err_write, tty_child, alive_read)
        linux.setns(own_pid_ns, linux.CLONE_NEWPID)
    finally:
        os.close(own_pid_ns)
    os.close(err_write)
    os.close(alive_read)
    try:
        return _supervise(pid, err_read, tty_parent, tty_child)
    finally:
        os.close(alive_write)


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


def _init(spec: EnterSpec, err_write: int, tty_child: socket.socket | None, alive: int) -> None:
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
        _exec(spec, err_write, pty_number)
    os.close(err_write)
    _reap(child)


def _setup(spec: EnterSpec) -> Path:
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
    if spec.network == "none":
        flags |= linux.CLONE_NEWNET
    linux.unshare(flags)
    # Nothing mounted from here on may propagate back to the host.
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    root = _mount_root(spec.root)
    for step in plan(spec.network, spec.binds):
        _mount_step(root, step)
    socket.sethostname(spec.hostname)
    if spec.network == "none":
        _loopback_up()
    return root


def _mount_root(root: OverlayRoot | DirectoryRoot) -> Path:
    if isinstance(root, OverlayRoot):
        lowers = ":".join(str(p) for p in root.lowers)
        options = f"lowerdir={lowers},upperdir={root.upper},workdir={root.work}"
        linux.mount("overlay", root.mountpoint, "overlay", 0, options)
        return root.mountpoint
    # pivot_root needs the new root to be a mount point.
    linux.mount(root.path, root.path, None, linux.MS_BIND | linux.MS_REC)
    return root.path


def resolve_in_root(root: Path, path: str, create: bool = False, is_file: bool = False) -> Path:
    """Resolve ``path`` as the sandbox will see it: symlinks are followed, but
    an absolute link or ``..`` never leaves ``root``. With ``create``, missing
    components are made (directories, and a file last when ``is_file``)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        current = root.joinpath(*resolved, name)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            if not create:
                raise
            if parts or not is_file:
                os.mkdir(current, 0o755)
            else:
                os.close(os.open(current, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
            resolved.append(name)
            continue
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path} in {root}")
            link = os.readlink(current)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        if parts and not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{'/'.join([*resolved, name])} is not a directory in {root}")
        resolved.append(name)
    return root.joinpath(*resolved)


def _mount_step(root: Path, step: MountStep) -> None:
    target = resolve_in_root(root, step.target, create=True, is_file=step.is_file)
    if step.fstype is None:
        linux.mount(step.source, target, None, linux.MS_BIND | linux.MS_REC)
        if step.readonly:
            linux.mount(None, target, None,
                        linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
    else:
        linux.mount(step.source, target, step.fstype, step.flags, step.data)
    if step.target == "/dev":
        _populate_dev(target)


def _populate_dev(dev: Path) -> None:
    for device in DEVICES:
        node = dev / device.name
        os.mknod(node, stat.S_IFCHR | device.mode, os.makedev(device.major, device.minor))
        os.chmod(node, device.mode)
    for name, target in DEV_LINKS:
        os.symlink(target, dev / name)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING)
        fcntl.ioctl(sock, _SIOCSIFFLAGS, request)


def _open_pty(root: Path, tty_child: socket.socket) -> int:
    """Make a pty in the sandbox's own devpts; hand the master to the manager."""
    master = os.open(root / "dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
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


@dataclass(frozen=True)
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


def _exec(spec: EnterSpec, err_write: int, pty_number: int | None) -> None:
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
        # Only stdin, stdout and stderr cross into the sandbox.
        os.closerange(3, err_write)
        os.closerange(err_write + 1, 1 << 16)
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
        linux.limit_capabilities(capabilities)
        if user.uid != 0 or user.gid != 0:
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
        os.chdir(workdir)
        argv = list(spec.argv) or [_default_shell()]
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
