"""The manager's side of a command it started (enter.py) or joined to a running sandbox
(join.py): signals forwarded, the pty relayed, the command's error report turned into the
exception, its exit status returned."""

from __future__ import annotations

import contextlib
import os
import signal

from sandboxmgr import tty
from sandboxmgr.errors import EXIT_CANNOT_INVOKE, EXIT_MANAGER, EXIT_NOT_FOUND, CommandFailed, SandboxError
from sandboxmgr.execute import FORWARDED
from sandboxmgr.pid1 import exit_status
from sandboxmgr.tty import wait_readable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from types import FrameType


def supervise(pid: int, err_read: int, tty_parent: socket.socket | None, tty_child: socket.socket | None,
              interruptible: bool = False, ready: Callable[[int], None] | None = None) -> int:
    """Forward signals to ``pid`` (PID 1, or a joined command: join.py), relay its pty, turn its
    error report into the exception, and return its exit status. ``ready`` is called once the
    command runs, with the wakeup descriptor its own waits must watch (tty.wait_readable).

    Every wait here is a select() that also watches a signal wakeup descriptor: Python runs a
    handler between bytecodes, so a signal that came just before a blocking system call
    (waitpid, read) would otherwise wait with it - a Ctrl-C lost until the command's end."""
    caught: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stop = interruptible and signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        if stop:
            caught.append(signum)
        with contextlib.suppress(ProcessLookupError):
            # PID 1 killed: the kernel kills every process of the sandbox with it.
            os.kill(pid, signal.SIGKILL if stop else signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    wake, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # blocked since the fork (_enter)
    master = None
    try:
        if tty_parent is not None and tty_child is not None:
            master = tty.receive_master(tty_parent, tty_child)
        report = _read_report(err_read, wake)
        if report:
            status = _wait(pid, wake)
            if master is not None:
                os.close(master)
            raise _report_to_error(report)
        if ready is not None:
            ready(wake)
        if master is not None:
            tty.relay(master, wake)
        status = _wait(pid, wake)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake)
        os.close(wake_write)
    if caught:
        if caught[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + caught[0])
    return exit_status(status)


def _read_report(err_read: int, wake: int) -> str:
    """What the command's process wrote on the error pipe before it closed it (at its exec)."""
    chunks: list[bytes] = []
    try:
        while True:
            if not wait_readable([err_read], wake):
                continue
            chunk = os.read(err_read, 65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)
    finally:
        os.close(err_read)


def _wait(pid: int, wake: int) -> int:
    """waitpid(pid), once its pidfd says it ended."""
    pidfd = os.pidfd_open(pid)
    try:
        while not wait_readable([pidfd], wake):
            pass
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def _report_to_error(report: str) -> SandboxError:
    code_text, _, rest = report.partition("\t")
    message, _, hint = rest.partition("\t")
    code = int(code_text) if code_text.isdigit() else EXIT_MANAGER
    if code in (EXIT_NOT_FOUND, EXIT_CANNOT_INVOKE):
        return CommandFailed(message, hint=hint or None, exit_code=code)
    return SandboxError(message, hint=hint or None, exit_code=code)
