"""What a sandbox's PID 1 does once the sandbox is set up (enter.py): reap for its command, or
hold a live sandbox.

A run's PID 1 (:func:`reap`) forwards signals to its one command, reaps every orphan, and
exits with the command's status; leaving PID 1 makes the kernel kill whatever else is left
in the namespace.

A live sandbox's PID 1 (:func:`hold`, see live.py) runs no command of its own. It holds the
sandbox's namespaces and mounted root while any number of commands join it (join.py), and
reaps what is reparented to it. A SIGTERM from the host (``sandboxmgr stop``; one sent from
inside the sandbox is ignored) makes it send SIGTERM to every other process of the sandbox
and exit once none is left; the stopper sends SIGKILL to PID 1 when its grace time is over,
and the kernel kills the rest with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

from sandboxmgr.execute import FORWARDED

_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# While stopping, how often PID 1 looks whether it is alone (a joined command is not its child:
# its end is seen in /proc, not by wait).
_POLL_SECONDS = 0.02


def exit_status(wait_status: int) -> int:
    """A wait status as a shell would report it: the code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def reap(child: int, everyone: bool = False) -> None:
    """Forward signals to the command (a SIGTERM to every process with ``everyone``: a live
    sandbox's main command, stopped), reap every orphan, exit with the command's status.

    The forwarded signals stay blocked, as the fork left them, and are taken by sigwaitinfo
    with SIGCHLD: a Python handler would run between bytecodes, and one due just before
    waitpid blocked would wait with it - a Ctrl-C forwarded only once the command ended."""
    waited = {*FORWARDED, signal.SIGCHLD}
    for sig in waited:
        signal.signal(sig, _ignore)
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    while True:
        status = _reaped(child)
        if status is not None:
            # Leaving PID 1 makes the kernel kill whatever else is left in the namespace.
            os._exit(status)
        signum = signal.sigwaitinfo(waited).si_signo
        if signum != signal.SIGCHLD:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1 if everyone and signum == signal.SIGTERM else child, signum)


def _reaped(child: int) -> int | None:
    """Reap every child that ended; the command's exit status once it ended (0 if it is
    gone without one), else None."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            return None
        if pid == child:
            return exit_status(wait_status)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """A handler, never run (the signals are blocked and taken by sigwaitinfo/sigtimedwait):
    the kernel delivers a signal to a PID namespace's init only when it has one."""


def hold() -> None:
    """Hold the sandbox until stopped (see the module's docstring). Never returns."""
    waited = {*_STOP, signal.SIGCHLD}
    for sig in waited:
        signal.signal(sig, _ignore)
    # FORWARDED stay blocked as the fork left them: nothing is forwarded, there is no command.
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    stopping = False
    while True:
        info = signal.sigtimedwait(waited, _POLL_SECONDS if stopping else 3600.0)
        _reap_orphans()
        # Only from the host: a sender in an ancestor PID namespace (stop, the monitor) is seen
        # as pid 0. Root inside may kill its own processes, but not stop the sandbox for the host.
        if info is not None and info.si_signo in _STOP and info.si_pid == 0 and not stopping:
            stopping = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGTERM)  # every process of the namespace but PID 1
        if stopping and _alone():
            os._exit(0)


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _alone() -> bool:
    """Whether PID 1 is the only process left (the sandbox's own /proc, mounted for its PID
    namespace, lists exactly its processes)."""
    try:
        return all(not name.isdigit() or name == "1" for name in os.listdir("/proc"))
    except OSError:
        return True
