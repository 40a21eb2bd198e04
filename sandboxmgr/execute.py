"""The command's process: the last fork of the sandbox's PID 1, after the root switch.

It takes its stdin, stdout and stderr (the spec's, or the pty), looks up its
user in the sandbox's own user database, cuts its capabilities, switches user,
sets no_new_privs and loads the system call filter, then executes the command.
A failure before the exec reaches the manager as one line on the error pipe
(:func:`fail`), which enter.py turns into the exception the caller sees.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings  # noqa: F401 - os.execvpe imports it, in a process that may import nothing (below)

from sandboxmgr import linux, tty
from sandboxmgr.errors import EXIT_CANNOT_INVOKE, EXIT_MANAGER, EXIT_NOT_FOUND, SandboxError, shown
from sandboxmgr.users import User, lookup_user

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from sandboxmgr.spec import EnterSpec

_MAX_FD = 0x7FFFFFFF
# What the manager and PID 1 pass on to the command, and the command takes back as default.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)


def import_nothing() -> None:
    """For a process inside a sandbox (PID 1 after the root switch, a joined command): the file
    system it sees is the sandbox's, so a module imported now would be read from there - the
    sandbox's code run with the manager's privileges. Everything such a process runs is imported
    before; from now on an import of anything else fails (ModuleNotFoundError, reported as any
    error) instead of reading a file."""
    sys.meta_path.clear()
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()


def fail(err_write: int, code: int, message: str, hint: str = "") -> None:
    """Tell the manager what went wrong (code, message, hint) and exit with ``code``."""
    try:
        os.write(err_write, f"{code}\t{message}\t{hint}".encode())
    finally:
        os._exit(code)


def exec_command(spec: EnterSpec, err_write: int, pty_number: int | None, seccomp_program: bytes | None,
                 env: dict[str, str], capabilities: frozenset[int]) -> None:
    """Session, tty, capabilities, user, exec of ``spec.argv`` with ``env`` (which has its
    PATH: HOME and TERM are added here) and ``capabilities``. Never returns."""
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
            signal.signal(sig, signal.SIG_DFL)
        # Blocked since the fork (enter._enter): one that came meanwhile acts now, as the default.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        os.setsid()
        _take_stdio(spec, err_write, pty_number)
        if spec.limits is not None and spec.limits.memory is not None:
            with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
                score.write("0")
        user = lookup_user(spec.user)
        env.setdefault("HOME", user.home)
        if pty_number is not None:
            env.setdefault("TERM", os.environ.get("TERM", "xterm"))
        workdir = spec.workdir or "/"
        os.makedirs(workdir, exist_ok=True)
        _drop_privileges(spec, user, capabilities, seccomp_program)
        os.chdir(workdir)
        argv = list(spec.argv) or [_default_shell()]
        if seccomp_program is not None and spec.no_new_privs:
            # Last, as late as possible: the filter binds only what the command does.
            linux.set_seccomp_filter(seccomp_program)
    except SandboxError as exc:
        fail(err_write, EXIT_MANAGER, exc.message, exc.hint or "")
        return
    except Exception as exc:
        fail(err_write, EXIT_MANAGER, f"cannot start the command: {exc}")
        return
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        fail(err_write, EXIT_NOT_FOUND, f"{shown(argv[0])}: command not found in the sandbox",
              "install it through the profile's packages, or give the full path")
    except OSError as exc:
        fail(err_write, EXIT_CANNOT_INVOKE, f"{shown(argv[0])}: cannot run: {exc.strerror}",
              "check that it is an executable file for this architecture")


def _take_stdio(spec: EnterSpec, err_write: int, pty_number: int | None) -> None:
    """The command's stdin, stdout and stderr (the spec's, or the pty), and no other descriptor."""
    if spec.stdio is not None:
        for target, fd in enumerate(spec.stdio):
            os.dup2(fd, target)
    if pty_number is not None:
        tty.attach_pty(pty_number)
    # Only stdin, stdout and stderr cross into the sandbox (close_range(2) makes
    # the whole range one syscall); err_write is close-on-exec.
    os.closerange(3, err_write)
    os.closerange(err_write + 1, _MAX_FD)


def _drop_privileges(spec: EnterSpec, user: User, capabilities: frozenset[int],
                     seccomp_program: bytes | None) -> None:
    """Capabilities cut, the user switched, no_new_privs set (the filter loaded first when
    it must be)."""
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


def _default_shell() -> str:
    return "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
