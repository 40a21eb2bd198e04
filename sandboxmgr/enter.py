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
import os
import select
import signal
import sys
from pathlib import Path

from sandboxmgr import linux, mountexec, pid1, tty
from sandboxmgr.entry import raise_if_interrupted
from sandboxmgr.errors import EXIT_MANAGER, SandboxError, warn
from sandboxmgr.execute import FORWARDED, exec_command, fail, import_nothing
from sandboxmgr.libseccomp import program
from sandboxmgr.mounts import full_plan, refuse_kernel_target
from sandboxmgr.record import record
from sandboxmgr.spec import CAPABILITY_NUMBERS, DEFAULT_PATH, INIT_NAME, EnterSpec
from sandboxmgr.supervise import supervise
from sandboxmgr.userns import entered, fork_in_pid_namespace
from sandboxmgr.users import check_user

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from sandboxmgr.runcgroup import RunCgroup

    Ready = Callable[[int, RunCgroup | None], None]

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


def enter(spec: EnterSpec, ready: Ready | None = None) -> int:
    """Run ``spec.argv`` in a new sandbox over ``spec.root``; return its exit status.

    Raises :class:`SandboxError` when the sandbox cannot be set up (125) and
    :class:`CommandFailed` when the command cannot be run (126, 127). When a
    limit stopped something (the OOM killer, the pids limit) one line on
    stderr says so. ``ready`` is called with PID 1's pid and the run's cgroup once the
    sandbox is set up (a held one: live.py), before the manager waits for it.
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
        from sandboxmgr.runcgroup import RunCgroup  # only runs with limits pay for it

        cgroup = RunCgroup.create(spec.limits)
    try:
        status = _enter(spec, cgroup, seccomp_program, ready)
    finally:
        if cgroup is not None:
            for left in cgroup.remove():
                warn(f"cannot remove the cgroup {left} (still busy); 'sandboxmgr doctor --fix' removes it")
    return status


def _enter(spec: EnterSpec, cgroup: RunCgroup | None, seccomp_program: bytes | None,
           ready: Ready | None) -> int:
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    # PID 1 sees this pipe hang up if the manager is already gone (see _init).
    alive_read, alive_write = os.pipe2(os.O_CLOEXEC)
    tty_parent = tty_child = None
    if spec.tty:
        import socket  # only a run with a tty passes a file descriptor

        tty_parent, tty_child = socket.socketpair()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    cgroup_fds = cgroup.open_procs() if cgroup is not None else []
    if spec.ids is not None:
        from sandboxmgr.idmap import user_namespace

        cgroup_fds.append(user_namespace(spec.ids))  # the last one: closed with them below
    # The signals to forward wait (blocked) from the fork until each process has its handler:
    # PID 1's forwarding one (pid1.reap), the command's default (exec_command), the manager's
    # (supervise). A Ctrl-C meanwhile is then delivered late, never lost to a handler replaced
    # before Python ran it.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        raise_if_interrupted()
        pid = fork_in_pid_namespace(own_pid_ns)
        if pid == 0:  # pragma: no cover - runs in the sandbox's PID 1
            os.close(err_read)
            os.close(alive_write)
            if tty_parent is not None:
                tty_parent.close()
            userns_fd = cgroup_fds.pop() if spec.ids is not None else None
            _init(spec, err_write, tty_child, alive_read, cgroup_fds, seccomp_program, userns_fd)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        raise
    finally:
        os.close(own_pid_ns)
        for fd in cgroup_fds:
            os.close(fd)
    os.close(err_write)
    os.close(alive_read)
    # Without -t the command gets the caller's own stdin, stdout and stderr: whatever it
    # does to them (echo off, raw mode, the window size, O_NONBLOCK) is undone at the end.
    caller = None if spec.tty or spec.stdio is not None else tty.save()
    try:
        status = supervise(pid, err_read, tty_parent, tty_child, spec.interruptible,
                           None if ready is None else lambda _wake: ready(pid, cgroup))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # if supervise did not get there
        os.close(alive_write)
        if caller is not None:
            tty.restore(caller)
    if cgroup is not None:
        reason = cgroup.report(status)
        if reason:
            print(f"sandboxmgr: {reason}", file=sys.stderr)
    return status


# --- the sandbox side: PID 1 --------------------------------------------------------------


def _init(spec: EnterSpec, err_write: int, tty_child: socket.socket | None, alive: int,
          cgroup_fds: list[int], seccomp_program: bytes | None, userns_fd: int | None) -> None:
    """PID 1 of the sandbox. Never returns."""
    try:
        # If the manager dies (even by SIGKILL), PID 1 dies, and with it the whole PID namespace
        # and every mount of the sandbox. getppid() is 0 across a PID namespace, so a manager
        # that died before the prctl is seen as a hang-up on the pipe whose write end only it holds.
        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([alive], [], [], 0)[0]:
            os._exit(EXIT_MANAGER)
        if userns_fd is None:
            os.close(alive)
        if cgroup_fds:
            # First of all, so that every mount, page and process below is counted.
            from sandboxmgr.runcgroup import join

            join(cgroup_fds)
            if spec.limits is not None and spec.limits.memory is not None:
                # The OOM killer should take the command, not the init (the command
                # resets it). Lowering needs CAP_SYS_RESOURCE: without it, both stay
                # equal and the larger process - the command - goes first anyway.
                with contextlib.suppress(OSError):
                    Path("/proc/self/oom_score_adj").write_text("-999")
        _become_init()
        root = _setup(spec, userns_fd)
        pty_number = None
        if tty_child is not None and userns_fd is None:
            pty_number = tty.open_pty(root, tty_child)
        _switch_root(root, spec.isolation)
        import_nothing()
        if userns_fd is not None:
            from sandboxmgr.idmap import pid1_becomes_root  # imported by then (_setup): no file read

            pid1_becomes_root(userns_fd, alive)
            if tty_child is not None:  # a pty of root inside (the host's root's it could not open)
                pty_number = tty.open_pty("/", tty_child)
        # Not dumpable: nothing inside may ptrace PID 1 or open /proc/1/exe (the host's Python).
        # An ordinary user's stays dumpable, or no command could join it (README: Live sandboxes).
        if not entered():
            linux.prctl(linux.PR_SET_DUMPABLE, 0)
    except SandboxError as exc:
        fail(err_write, EXIT_MANAGER, exc.message, exc.hint or "")
    except Exception as exc:
        fail(err_write, EXIT_MANAGER, f"cannot set up the sandbox: {exc}")
    if spec.hold:  # set up: the error pipe hangs up, and PID 1 holds the sandbox (pid1.py)
        os.close(err_write)
        pid1.hold()
    env = dict(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    capabilities = spec.capabilities
    if spec.isolation == "chroot":
        capabilities = capabilities - {CAPABILITY_NUMBERS["SYS_CHROOT"]}
    child = os.fork()
    if child == 0:
        exec_command(spec, err_write, pty_number, seccomp_program, env, capabilities)
    os.close(err_write)
    pid1.reap(child, everyone=spec.live)


def _become_init() -> None:
    """PID 1's own keyring, name, session and umask."""
    # A fresh, anonymous session keyring for the sandbox: the caller's session keys
    # (@s, inherited through fork) are not reachable inside, and keys added there die with
    # the sandbox. Root's user keyring (@u) is per uid, not per sandbox: only the seccomp
    # filter (no keyctl, add_key, request_key) keeps the sandbox from it.
    linux.join_new_session_keyring()
    # How `sandboxmgr doctor` finds a sandbox whose manager died.
    linux.set_process_name(INIT_NAME)
    # Nor the host's interpreter and store paths in its command line (as nspawn's and tini's).
    with contextlib.suppress(OSError):
        linux.set_command_line(INIT_NAME)
    os.setsid()
    os.umask(0o022)


def _setup(spec: EnterSpec, userns_fd: int | None = None) -> Path:
    # A cgroup namespace of its own, made after the init joined the run's cgroup (if
    # any): the sandbox's view of the cgroup tree is rooted there, so neither the host's
    # cgroup paths nor any other process's cgroup can be named from inside.
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWCGROUP
    if spec.network == "none":
        flags |= linux.CLONE_NEWNET
    linux.unshare(flags)
    # Nothing mounted from here on may propagate back to the host.
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    if userns_fd is not None and isinstance(spec.root, OverlayRoot):
        from sandboxmgr.idmap import idmap_layers

        idmap_layers(spec.root.lowers + tuple(bind.source for bind in spec.binds if bind.copy_on_write), userns_fd)
    assert spec.root is not None  # only a joining command's spec has none (join.py)
    root = _mount_root(spec.root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mountexec.carry_out(root_fd, full_plan(spec.network, spec.binds, spec.etc_dir, spec.ids))
    finally:
        os.close(root_fd)
    linux.sethostname(spec.hostname)
    if spec.network == "none":
        linux.loopback_up()
    return root


def _mount_root(root: OverlayRoot | DirectoryRoot) -> Path:
    if isinstance(root, OverlayRoot):
        return mountexec.mount_overlay_root(root.lowers, root.upper, root.work, root.mountpoint, root.volatile)
    return mountexec.mount_directory_root(root.path)


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
