"""A live sandbox's monitor: the host-side process that starts it, waits for it and records it.

``sandboxmgr start`` (and a command into a stopped sandbox) forks it, detached (its own
session, double-forked, stdio on /dev/null), and returns once the sandbox is set up::

    sandboxmgr-mon (host)                   holds the sandbox's live lock, its image, its cgroup
     └─ sandboxmgr-init (PID 1, hold.py)    holds the namespaces and the mounted root
         ├─ commands joined by exec         (their parent is their own sandboxmgr exec)
         └─ their orphans

The monitor holds the sandbox's ``live`` lock for exactly as long as PID 1 lives: "is it
running?" is one flock probe, right after a crash or a reboot too. PID 1 dies with the
monitor (its parent-death signal), so a ``kill -9`` of the monitor stops the sandbox
whole; the state file then still says running, and the free lock says otherwise.

An ``auto`` monitor (a command into a stopped sandbox started it) stops the sandbox once
no command is left in it: each command holds the sandbox's ``use`` lock shared while it
runs, and the monitor waits for it exclusively.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sandboxmgr import linux
from sandboxmgr.enter import enter
from sandboxmgr.errors import SandboxError
from sandboxmgr.live import AUTO_GRACE_SECONDS, STATE_FILE
from sandboxmgr.record import read_json, write_json
from sandboxmgr.store import now_iso

if TYPE_CHECKING:
    from sandboxmgr.locks import Lock
    from sandboxmgr.runcgroup import RunCgroup
    from sandboxmgr.spec import EnterSpec
    from sandboxmgr.store import SandboxRecord, Store

MONITOR_NAME = "sandboxmgr-mon"  # as ps shows it (15 bytes at most)
LOG_MAX_BYTES = 8 * 1024 * 1024  # per file: a detached command's log takes 16 MiB at most
_UNUSED_POLL_SECONDS = 1.0
_MAX_FD = 0x7FFFFFFF


def terminate(pidfd: int, grace: float) -> None:
    """Stop a live sandbox's PID 1: SIGTERM (it passes it to every process inside, pid1.hold),
    then SIGKILL when ``grace`` seconds pass first (the kernel kills the rest with it). No
    grace (``kill``, ``rm -f``): SIGKILL alone, so that nothing inside gets a SIGTERM first."""
    if grace > 0:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if select.select([pidfd], [], [], grace)[0]:
            return
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def spawn(store: Store, record: SandboxRecord, spec: EnterSpec, holds: list[Lock], auto: bool,
          log: Path | None = None) -> None:
    """Start ``record``'s monitor with ``spec`` (a held sandbox's, or one with its main command);
    return once PID 1 is set up (and the main command started). ``holds``: locks the monitor
    takes (shared) for its life, as a run holds its image's; ``log``: where the main command's
    output goes (see :class:`Log`)."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the monitor's side
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() == 0:
                _monitor(store, record, spec, holds, auto, write_fd, log)
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    # One line; not up to the end of the pipe, which PID 1 (forked by the monitor) holds open.
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.readline().decode(errors="replace").rstrip("\n")
    if report == "ok":
        return
    code, _, rest = report.partition("\t")
    message, _, hint = rest.partition("\t")
    raise SandboxError(message or f"sandbox {record.name!r} did not start: its monitor died",
                       hint=hint or "see 'sandboxmgr doctor'", exit_code=int(code) if code.isdigit() else 125)


def _monitor(store: Store, record: SandboxRecord, spec: EnterSpec, holds: list[Lock], auto: bool,
             ready_fd: int, log_path: Path | None) -> None:
    """The monitor (see the module's docstring). Never returns."""
    # Nothing of the manager's: its locks above all (an inherited flock lasts as long as any copy).
    os.closerange(3, ready_fd)
    os.closerange(ready_fd + 1, _MAX_FD)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    log = Log(log_path) if log_path is not None else None
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        linux.set_process_name(MONITOR_NAME)
        linux.set_command_line(f"{MONITOR_NAME} {record.name}")
    status: int | None = None
    live = store.lock("live", record.name)
    try:
        if not live.try_acquire():
            raise SandboxError(f"sandbox {record.name!r} is already running")
        write_json(record.path / STATE_FILE, {"status": "starting", "monitor": os.getpid()})
        for lock in holds:
            lock.acquire_shared()
        status = enter(spec, lambda pid, cgroup: _ready(store, record, pid, cgroup, auto, ready_fd, log))
    except SandboxError as exc:
        _report(ready_fd, f"{exc.exit_code}\t{exc.message}\t{exc.hint or ''}")
    except BaseException as exc:
        _report(ready_fd, f"125\tsandbox {record.name!r} did not start: {exc}")
    finally:
        if log is not None:
            log.finish()
        with contextlib.suppress(OSError):
            write_json(record.path / STATE_FILE, {"status": "stopped", "exit_code": status,
                                                  "finished": now_iso()})
        os._exit(0)


def _report(ready_fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(ready_fd, text.replace("\n", " ").encode() + b"\n")


def _ready(store: Store, record: SandboxRecord, pid: int, cgroup: RunCgroup | None, auto: bool,
           ready_fd: int, log: Log | None) -> None:
    """PID 1 is set up: record it, tell the starter, and (auto) wait for the commands to end."""
    from sandboxmgr.cgroups import LEAF
    from sandboxmgr.join import start_time

    leaves = [str(directory / LEAF) for directory in (cgroup.directories if cgroup else {})]
    write_json(record.path / STATE_FILE, {
        "status": "running", "pid": pid, "start_time": start_time(pid) or 0,
        "monitor": os.getpid(), "started": now_iso(), "auto": auto, "cgroups": leaves,
    })
    pidfd = os.pidfd_open(pid)  # before PID 1 can be reaped: never another process's pid
    if log is not None:
        log.start()
    _report(ready_fd, "ok")
    os.close(ready_fd)
    if auto:
        threading.Thread(target=_stop_when_unused, args=(store, record, pidfd), daemon=True).start()


class Log:
    """A detached main command's stdout and stderr (run -d): a pipe whose other end the monitor
    copies to ``output.log``, as Docker's json-file driver keeps a container's; over
    :data:`LOG_MAX_BYTES` it becomes ``output.log.1`` (the one before goes) and a new one begins.
    The monitor's own fds 1 and 2 are the pipe (the command gets them through PID 1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read_fd, write_fd = os.pipe()
        os.set_inheritable(self.read_fd, False)
        for fd in (1, 2):
            os.dup2(write_fd, fd)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._copy, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def _copy(self) -> None:
        out = self._open()
        size = os.fstat(out).st_size
        while chunk := os.read(self.read_fd, 65536):
            if size + len(chunk) > LOG_MAX_BYTES and size:
                os.close(out)
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                out, size = self._open(), 0
            os.write(out, chunk)
            size += len(chunk)
        os.close(out)

    def finish(self) -> None:
        """Every process of the sandbox is gone: what they wrote is copied, up to the end."""
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.close(null)
        if self.thread.is_alive():
            self.thread.join(timeout=10)


def _still_auto(record: SandboxRecord) -> bool:
    try:
        return bool(read_json(record.path / STATE_FILE).get("auto"))
    except (OSError, ValueError):
        return True


def _stop_when_unused(store: Store, record: SandboxRecord, pidfd: int) -> None:
    """The last command stops an auto sandbox itself (live._leave); this is for when its
    manager was killed first: once no command holds the sandbox, stop it. Both locks stay
    held until the monitor exits, so a command arriving meanwhile waits, then starts it anew."""
    transition, use = store.lock("sandbox", record.name), store.lock("use", record.name)
    while True:
        time.sleep(_UNUSED_POLL_SECONDS)
        if not transition.try_acquire():
            continue
        if use.try_acquire():
            if _still_auto(record):  # ``start`` may have kept it since
                terminate(pidfd, AUTO_GRACE_SECONDS)
                return
            use.release()
        transition.release()
