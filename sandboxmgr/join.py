"""Join a live sandbox: run a command in the namespaces, root and cgroup its PID 1 holds.

As ``docker exec`` and ``nsenter`` do: no mount and no unmount, so a command starts in
the time of a fork and a few system calls, whatever the upper file system has in flight.
The process tree of a joined command::

    sandboxmgr exec (host)            forwards signals, relays the pty, waits
     └─ the command (in the sandbox)  born in its PID namespace, then setns into the rest

The manager makes its next child be born in the sandbox's PID namespace (``setns`` on a
pidfd of its PID 1, CLONE_NEWPID: it concerns children only) and forks; the child joins
the sandbox's cgroup, its mount, UTS, IPC, network and cgroup namespaces (one ``setns``
on the pidfd; joining the mount namespace takes it to that namespace's root, which
pivot_root made the sandbox's; with the chroot isolation it then chroots into PID 1's
root, ``/proc/PID/root``, opened before the join), and from there is exactly a
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
import sys

from sandboxmgr import linux, tty
from sandboxmgr.entry import raise_if_interrupted
from sandboxmgr.errors import EXIT_MANAGER, SandboxError
from sandboxmgr.execute import FORWARDED, exec_command, fail, import_nothing
from sandboxmgr.idmap import become_root
from sandboxmgr.record import record
from sandboxmgr.spec import CAPABILITY_NUMBERS, DEFAULT_PATH, INIT_NAME, EnterSpec
from sandboxmgr.supervise import supervise

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    pass

_STOPPED = "the sandbox stopped while the command was joining it"
_STOPPED_HINT = "run the command again: it starts the sandbox"
_JOINED = {"mnt": linux.CLONE_NEWNS, "uts": linux.CLONE_NEWUTS, "ipc": linux.CLONE_NEWIPC,
           "net": linux.CLONE_NEWNET, "cgroup": linux.CLONE_NEWCGROUP}


def _differing(pid: int) -> int:
    """The flags of the namespaces PID 1 has and we have not: the host's network (--network
    host) is joined by staying in it, which an ordinary user's manager could not setns into."""
    flags = 0
    for name, flag in (*_JOINED.items(), ("user", linux.CLONE_NEWUSER)):
        if os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
            flags |= flag
    return flags


@record
class Holder:
    """A live sandbox's PID 1, as its monitor recorded it (live.py)."""

    pid: int
    start_time: int  # /proc/PID/stat's, so that a pid used again is never taken for it
    cgroups: tuple[str, ...] = ()  # the leaves of its run cgroup, which joined commands enter


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22); as
    cgroups.process_start_time, whose module the fast path of ``exec`` does not import."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


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
        if name == INIT_NAME and start_time(holder.pid) == holder.start_time:
            signal.pidfd_send_signal(pidfd, 0)  # still that process: what /proc said was its
            return pidfd
    except (OSError, ProcessLookupError):
        pass
    os.close(pidfd)
    return None


def run_joined(holder: Holder, pidfd: int, spec: EnterSpec, seccomp_program: bytes | None) -> int:
    """Run ``spec``'s command in the live sandbox of ``holder`` (``pidfd`` from
    :func:`open_holder`) under ``seccomp_program`` (``spec.seccomp`` built: libseccomp.program);
    return its exit status. ``spec.root`` is unused: the root is PID 1's."""
    opened: list[int] = []
    try:
        root_fd = None
        if spec.isolation == "chroot":
            # The mount namespace's root is not the sandbox's: PID 1 chrooted into it. With
            # pivot_root it is, and setns() takes the joining command there by itself.
            root_fd = os.open(f"/proc/{holder.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append(root_fd)
            signal.pidfd_send_signal(pidfd, 0)  # the root opened is that process's
        cgroup_fds = [os.open(f"{leaf}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for leaf in holder.cgroups]
        opened += cgroup_fds
        flags = _differing(holder.pid)
        signal.pidfd_send_signal(pidfd, 0)  # what /proc said was that process's
        if not holder.cgroups or spec.limits is None:
            return _fork_joined(spec, pidfd, flags, root_fd, cgroup_fds, seccomp_program)
        from pathlib import Path

        from sandboxmgr.runcgroup import describe, events_in  # only with limits: a cost the rest avoids

        leaves = [Path(leaf) for leaf in holder.cgroups]
        before = events_in(leaves)
        status = _fork_joined(spec, pidfd, flags, root_fd, cgroup_fds, seccomp_program)
        after = events_in(leaves)
        said = describe(spec.limits, after[0] - before[0], after[1] - before[1], status)
        if said:  # what the sandbox's limits did while this command ran (another's too, alike)
            print(f"sandboxmgr: {said}", file=sys.stderr)
        return status
    except ProcessLookupError:
        raise SandboxError(_STOPPED, hint=_STOPPED_HINT) from None
    except OSError as exc:
        raise SandboxError(f"cannot join the sandbox: {exc}", hint="see 'sandboxmgr doctor'") from None
    finally:
        for fd in opened:
            os.close(fd)


def _fork_joined(spec: EnterSpec, pidfd: int, flags: int, root_fd: int | None, cgroup_fds: list[int],
                 seccomp_program: bytes | None) -> int:
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    tty_parent = tty_child = None
    if spec.tty:
        import socket

        tty_parent, tty_child = socket.socketpair()
    # The caller's terminal never goes in (see tty.terminal_pipes): a process the command leaves in
    # the running sandbox would keep it, and read and write what the caller types next.
    pipes = {} if spec.tty or spec.stdio is not None else tty.terminal_pipes()
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # as enter._enter: none lost, none early
    try:
        raise_if_interrupted()
        linux.setns(pidfd, linux.CLONE_NEWPID)  # our next child is born in the sandbox's
        try:
            pid = os.fork()
        except BaseException:
            _back_to(own_pid_ns)
            raise
        if pid == 0:  # pragma: no cover - the joined command
            os.close(err_read)
            if tty_parent is not None:
                tty_parent.close()
            for target, (theirs, _) in pipes.items():
                os.dup2(theirs, target)
            _joined(spec, err_write, pidfd, flags, root_fd, cgroup_fds, tty_child, seccomp_program)
        _back_to(own_pid_ns)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        raise
    finally:
        os.close(own_pid_ns)
    os.close(err_write)
    for theirs, _ in pipes.values():
        os.close(theirs)
    caller = None if spec.tty or spec.stdio is not None else tty.save()
    try:
        return supervise(pid, err_read, tty_parent, tty_child, spec.interruptible,
                         ready=(lambda wake: tty.relay_pipes(pid, pipes, wake)) if pipes else None)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        if caller is not None:
            tty.restore(caller)


def _back_to(own_pid_ns: int) -> None:
    """Our next children in our own PID namespace again. In an ordinary user's namespace
    (userns.py) the host's user namespace owns it and setns() is refused: the manager forks
    nothing after a joined command, so its children stay the sandbox's."""
    try:
        linux.setns(own_pid_ns, linux.CLONE_NEWPID)
    except PermissionError:
        from sandboxmgr.userns import entered

        if not entered():
            raise


def _joined(spec: EnterSpec, err_write: int, pidfd: int, flags: int, root_fd: int | None, cgroup_fds: list[int],
            tty_child: object, seccomp_program: bytes | None) -> None:
    """The child: join, then become the command (execute.py). Never returns."""
    try:
        # First: from now on nothing in the sandbox may ptrace this process or read its /proc.
        linux.prctl(linux.PR_SET_DUMPABLE, 0)
        import_nothing()  # it is about to see the sandbox's files
        for fd in cgroup_fds:  # before the cgroup namespace: the sandbox's view is rooted there
            os.write(fd, b"0")
            os.close(fd)
        linux.setns(pidfd, flags & ~linux.CLONE_NEWUSER)  # with the mount namespace, its root (see run_joined)
        if root_fd is not None:
            os.fchdir(root_fd)
            os.chroot(".")
            os.close(root_fd)
        os.chdir("/")
        if flags & linux.CLONE_NEWUSER:  # --userns auto: PID 1's, last (idmap.py)
            become_root(pidfd)
            linux.prctl(linux.PR_SET_DUMPABLE, 0)  # the change of credentials reset it
        os.close(pidfd)
        linux.join_new_session_keyring()
        pty_number = None
        if tty_child is not None:
            import socket

            assert isinstance(tty_child, socket.socket)
            pty_number = tty.open_pty("/", tty_child)
    except SandboxError as exc:
        fail(err_write, EXIT_MANAGER, exc.message, exc.hint or "")
        return
    except ProcessLookupError:  # PID 1 died since run_joined looked (a stop, a restart)
        fail(err_write, EXIT_MANAGER, _STOPPED, _STOPPED_HINT)
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
