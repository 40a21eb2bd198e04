"""The caller's terminal and descriptors, put back as they were after a run without ``-t``.

Without ``-t`` the command gets the caller's stdin, stdout and stderr themselves
(as ``docker run`` without ``-t`` does not: it copies through pipes). That keeps
``isatty``, seekable stdin and the fast path (no relay process, no copy loop),
but the command can change what it shares with the caller: a terminal's
settings (echo off, raw mode) and window size, and the open files' status
flags (``O_NONBLOCK``, ``O_APPEND``), which belong to the open file and so
outlive the sandbox. :func:`save` notes them before the run and
:func:`restore` puts back whatever changed: a few system calls, and none of
the terminal ones when nothing is a terminal.

What cannot be undone is what a terminal showed (output) or queued: input the
command read is gone, as with any program.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import termios

from sandboxmgr.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

_WINSIZE = b"\0" * 8


@record
class Saved:
    fd: int
    flags: int
    attrs: list[Any] | None  # termios.tcgetattr's list, for a terminal
    winsize: bytes | None


def save() -> list[Saved]:
    found = []
    for fd in (0, 1, 2):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            continue  # closed
        attrs = winsize = None
        try:
            attrs = termios.tcgetattr(fd)
            winsize = fcntl.ioctl(fd, termios.TIOCGWINSZ, _WINSIZE)
        except (termios.error, OSError):
            pass  # not a terminal
        found.append(Saved(fd, flags, attrs, winsize))
    return found


def restore(saved: list[Saved]) -> None:
    """Put back what changed; never fails (the run's status matters more)."""
    for item in saved:
        with contextlib.suppress(OSError):
            if fcntl.fcntl(item.fd, fcntl.F_GETFL) != item.flags:
                fcntl.fcntl(item.fd, fcntl.F_SETFL, item.flags)
        if item.attrs is None:
            continue
        with contextlib.suppress(termios.error, OSError), _no_sigttou():
            if termios.tcgetattr(item.fd) != item.attrs:
                termios.tcsetattr(item.fd, termios.TCSANOW, item.attrs)
            if item.winsize is not None and fcntl.ioctl(item.fd, termios.TIOCGWINSZ, _WINSIZE) != item.winsize:
                fcntl.ioctl(item.fd, termios.TIOCSWINSZ, item.winsize)


@contextlib.contextmanager
def _no_sigttou() -> Iterator[None]:
    """A caller in the background (``sandboxmgr run ... &``) may still restore its terminal:
    tcsetattr would otherwise stop it with SIGTTOU, as shells know."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTTOU, previous)
