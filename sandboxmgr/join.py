"""Join a live sandbox: run a command in the namespaces, root and cgroup its PID 1 holds.

As ``docker exec`` and ``nsenter`` do: no mount and no unmount, so a command starts in
the time of a fork and a few system calls, whatever the upper file system has in flight.
The process tree of a joined command::

    sandboxmgr exec (host)            forwards signals, relays the pty, waits
     └─ the command (in the sandbox)  born in its PID namespace, then setns into the rest

The manager makes its next child be born in the sandbox's PID namespace (``setns`` on a
pidfd of its PID 1, CLONE_NEWPID: it concerns children only) and forks; the child joins
the sandbox's cgroup, its mount, UTS, IPC, network and cgroup namespaces (one ``setns``
on the pidfd), takes PID 1's root (``/proc/PID/root``, opened before the join: in the
chroot isolation the namespace's root is not the sandbox's), and from there is exactly a
command of the sandbox: execute.py cuts its capabilities, switches its user, sets
no_new_privs and loads the filter as for the first command.

The sandbox is hostile by then (it has been running): the child is not dumpable from its
fork on (no process inside may ptrace it or open its /proc files), it takes a fresh
session keyring as PID 1 did, and it carries no descriptor of the host into the sandbox
(everything it opened on the host side is close-on-exec and closed before the command).
The pid in the store is never trusted alone: the pidfd is taken first and the process
checked to be that sandbox's PID 1 (its start time and name) while the pidfd holds it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from sandboxmgr import linux, tty
from sandboxmgr.cgroups import process_start_time
from sandboxmgr.enter import CAPABILITY_NUMBERS, DEFAULT_PATH, INIT_NAME, EnterSpec, supervise
from sandboxmgr.errors import EXIT_MANAGER, SandboxError
from sandboxmgr.execute import FORWARDED, exec_command, fail
from sandboxmgr.libseccomp import program
from sandboxmgr.record import record

_JOINED = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC | linux.CLONE_NEWNET | linux.CLONE_NEWCGROUP


@record
class Holder:
    """A live sandbox's PID 1, as its monitor recorded it (live.py)."""

    pid: int
    start_time: int  # /proc/PID/stat's, so that a pid used again is never taken for it
    cgroups: tuple[str, ...] = ()  # the leaves of its run cgroup, which joined commands enter


def open_holder(holder: Holder) -> int | None:
    """A pidfd of ``holder``'s process while it is that sandbox's PID 1, else None (it died;
    its pid may be another process's by now)."""
    try:
        pidfd = os.pidfd_open(holder.pid)
    except (ProcessLookupError, OSError):
        return None
    try:
        with open(f"/proc/{holder.pid}/comm") as comm:
            name = comm.read().strip()
        if name == INIT_NAME and process_start_time(holder.pid) == holder.start_time:
            signal.pidfd_send_signal(pidfd, 0)  # still that process: what /proc said was its
            return pidfd
    except (OSError, ProcessLookupError):
        pass
    os.close(pidfd)
    return None


def run_joined(holder: Holder, pidfd: int, spec: EnterSpec) -> int:
    """Run ``spec``'s command in the live sandbox of ``holder`` (``pidfd`` from
    :func:`open_holder`); return its exit status. ``spec.root`` is unused: the root is PID 1's."""
    seccomp_program = program(spec.seccomp, spec.seccomp_cache) if spec.seccomp is not None else None
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    root_fd = os.open(f"/proc/{holder.pid}/root", flags)
    opened = [root_fd]
    try:
        signal.pidfd_send_signal(pidfd, 0)  # the root opened is that process's
        cgroup_fds = [os.open(Path(leaf) / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for leaf in holder.cgroups]
        opened += cgroup_fds
        return _fork_joined(spec, pidfd, root_fd, cgroup_fds, seccomp_program)
    except ProcessLookupError:
        raise SandboxError("the sandbox stopped while the command was joining it",
                           hint="run the command again: it starts the sandbox") from None
    except OSError as exc:
        raise SandboxError(f"cannot join the sandbox: {exc}", hint="see 'sandboxmgr doctor'") from None
    finally:
        for fd in opened:
            os.close(fd)


def _fork_joined(spec: EnterSpec, pidfd: int, root_fd: int, cgroup_fds: list[int],
                 seccomp_program: bytes | None) -> int:
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    tty_parent = tty_child = None
    if spec.tty:
        import socket

        tty_parent, tty_child = socket.socketpair()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # as enter._enter: none lost, none early
    try:
        linux.setns(pidfd, linux.CLONE_NEWPID)  # our next child is born in the sandbox's
        try:
            pid = os.fork()
        except BaseException:
            linux.setns(own_pid_ns, linux.CLONE_NEWPID)
            raise
        if pid == 0:  # pragma: no cover - the joined command
            os.close(err_read)
            if tty_parent is not None:
                tty_parent.close()
            _joined(spec, err_write, pidfd, root_fd, cgroup_fds, tty_child, seccomp_program)
        linux.setns(own_pid_ns, linux.CLONE_NEWPID)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        raise
    finally:
        os.close(own_pid_ns)
    os.close(err_write)
    caller = None if spec.tty or spec.stdio is not None else tty.save()
    try:
        return supervise(pid, err_read, tty_parent, tty_child, spec.interruptible)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        if caller is not None:
            tty.restore(caller)


def _joined(spec: EnterSpec, err_write: int, pidfd: int, root_fd: int, cgroup_fds: list[int],
            tty_child: object, seccomp_program: bytes | None) -> None:
    """The child: join, then become the command (execute.py). Never returns."""
    try:
        # First: from now on nothing in the sandbox may ptrace this process or read its /proc.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        for fd in cgroup_fds:  # before the cgroup namespace: the sandbox's view is rooted there
            os.write(fd, b"0")
            os.close(fd)
        linux.setns(pidfd, _JOINED)
        os.close(pidfd)
        os.fchdir(root_fd)
        os.chroot(".")
        os.chdir("/")
        os.close(root_fd)
        linux.join_new_session_keyring()
        pty_number = None
        if tty_child is not None:
            import socket

            assert isinstance(tty_child, socket.socket)
            pty_number = tty.open_pty(Path("/"), tty_child)
    except SandboxError as exc:
        fail(err_write, EXIT_MANAGER, exc.message, exc.hint or "")
        return
    except Exception as exc:
        fail(err_write, EXIT_MANAGER, f"cannot join the sandbox: {exc}")
        return
    env = dict(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    capabilities = spec.capabilities
    if spec.isolation == "chroot":
        capabilities = capabilities - {CAPABILITY_NUMBERS["SYS_CHROOT"]}
    with contextlib.suppress(OSError):
        linux.set_process_name("sandboxmgr-exec")
    exec_command(spec, err_write, pty_number, seccomp_program, env, capabilities)
