"""Terminals: the pty of a run with ``-t``, and the caller's own terminal after a run without.

With ``-t`` the sandbox's PID 1 makes a pty in the sandbox's own devpts
(:func:`open_pty`) and hands its master to the manager over a socket
(:func:`receive_master`); the command takes the slave as its controlling
terminal (:func:`attach_pty`), and the manager copies between its own stdin and
stdout and the master (:func:`relay`) until the sandbox closes it.

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
import errno
import fcntl
import os
import select
import signal
import struct
import sys
import termios

from sandboxmgr.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path)
if TYPE_CHECKING:
    import socket
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

_WINSIZE = b"\0" * 8
_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430


# --- the sandbox side: PID 1 makes the pty, the command takes it ------------------------


def open_pty(root: str | Path, tty_child: socket.socket) -> int:
    """Make a pty in the sandbox's own devpts; hand the master to the manager."""
    master = os.open(os.path.join(root, "dev/pts/ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
    import socket

    socket.send_fds(tty_child, [b"m"], [master])
    tty_child.close()
    os.close(master)
    return int(number)


def attach_pty(pty_number: int) -> None:
    """Make the pty's slave the controlling terminal and stdin, stdout and stderr of the
    calling process (a session leader inside the sandbox)."""
    slave = os.open(f"/dev/pts/{pty_number}", os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


# --- the manager side of a pty --------------------------------------------------------------


def receive_master(tty_parent: socket.socket, tty_child: socket.socket) -> int | None:
    """The pty master PID 1 sends (None when it sent none: it failed first)."""
    tty_child.close()
    import socket

    _, fds, _, _ = socket.recv_fds(tty_parent, 16, 1)
    tty_parent.close()
    return fds[0] if fds else None


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


def wait_readable(fds: list[int], wake: int) -> list[int]:
    """Those of ``fds`` that are readable, waiting until one is. A signal that comes meanwhile
    (or came just before) makes it return early, empty: the caller loops, and its handler runs
    on the way back (the interpreter runs handlers that are due at a loop's jump back)."""
    ready, _, _ = select.select([*fds, wake], [], [])
    if wake in ready:
        with contextlib.suppress(BlockingIOError):
            while os.read(wake, 256):
                pass
    return [fd for fd in ready if fd != wake]


def relay(master: int, wake: int) -> None:
    """Copy between our stdin/stdout and the sandbox's pty until the sandbox closes it
    (``wake``: supervise's signal wakeup descriptor)."""
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
            ready = wait_readable(sources, wake)
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


def terminal_pipes() -> dict[int, tuple[int, int]]:
    """For a command joining a running sandbox without -t: a pipe for each of our stdin, stdout
    and stderr that is a terminal (fd -> (the command's end, ours)), as ``docker exec`` without
    -t. A run may give the command the terminal itself: everything in it dies with it. A running
    sandbox outlives the command, and what the command leaves there would keep the terminal."""
    pipes = {}
    for fd in (0, 1, 2):
        if os.isatty(fd):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            pipes[fd] = (read_end, write_end) if fd == 0 else (write_end, read_end)
    return pipes


def relay_pipes(pid: int, pipes: dict[int, tuple[int, int]], wake: int) -> None:
    """Copy between our terminal and the command's pipes (:func:`terminal_pipes`) until the
    command (our child ``pid``) exits, then what it left in them; never after: whatever it left
    running in the sandbox writes into pipes no one reads, and reads nothing of ours."""
    pidfd = os.pidfd_open(pid)
    # source -> where it goes: our stdin to the command's, its stdout and stderr to ours
    feeds = {(ours if fd else 0): (pipes[0][1] if fd == 0 else fd) for fd, (_, ours) in pipes.items()}
    ends = {ours for _, ours in pipes.values()}
    try:
        while True:
            ready = wait_readable([pidfd, *feeds], wake)
            for source in [fd for fd in ready if fd != pidfd]:
                _feed(source, feeds, ends)
            if pidfd in ready:
                break
        for source in [fd for fd in feeds if fd != 0]:  # what it wrote before it ended
            os.set_blocking(source, False)
            with contextlib.suppress(BlockingIOError):
                for _ in range(64):  # at most 4 MiB: something it left may go on writing
                    if source not in feeds:
                        break
                    _feed(source, feeds, ends)
    finally:
        os.close(pidfd)
        for fd in ends:
            os.close(fd)


def _feed(source: int, feeds: dict[int, int], ends: set[int]) -> None:
    try:
        data = os.read(source, 65536)
    except BlockingIOError:
        raise
    except OSError:
        data = b""
    target = feeds[source]
    if data:
        try:
            _write_all(target, data)
            return
        except BrokenPipeError:  # the command closed its stdin
            pass
    del feeds[source]
    if source == 0 and target in ends:  # our stdin ended (Ctrl-D): so does the command's
        ends.discard(target)
        os.close(target)


# --- the caller's terminal, after a run without -t ------------------------------------------


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
