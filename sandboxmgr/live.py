"""Live sandboxes: a named sandbox is stopped or running, as a container is.

Stopped: its changes on disk, nothing mounted, no process. Running: a PID 1 holds its
namespaces and its mounted root (monitor.py starts it and waits for it), and any number of
commands run in it at once, each joining it (join.py): they see each other's processes and
files. A command into a stopped sandbox starts it, and the sandbox stops again once the
last command in it has ended (an ``auto`` start); ``start`` starts one that stays running
until ``stop``.

Three locks per sandbox (locks.py spells their files):

- ``sandbox-NAME``: its transitions. Start, stop and rm hold it exclusively; a command holds
  it only while it arrives (looks, starts if needed, registers), never while it runs.
- ``live-NAME``: the monitor holds it for exactly as long as PID 1 lives; "is it running?"
  is a probe of it, true after any crash or reboot.
- ``use-NAME``: each command holds it shared while it runs; an auto monitor waits for it
  exclusively to stop the sandbox, and ``rm`` takes it to know no command is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sandboxmgr import ticket
from sandboxmgr.config import SandboxConfig
from sandboxmgr.errors import BusyError, NotFoundError, SandboxError
from sandboxmgr.join import Holder, open_holder, run_joined
from sandboxmgr.libseccomp import program
from sandboxmgr.locks import is_locked
from sandboxmgr.record import read_json, write_json
from sandboxmgr.sandbox import hold_spec, holds, image_of, join_spec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import cost (the fast path of exec)
if TYPE_CHECKING:
    from typing import Any

    from sandboxmgr.locks import Lock
    from sandboxmgr.store import SandboxRecord, Store

DEFAULT_STOP_SECONDS = 10  # docker stop's
AUTO_GRACE_SECONDS = 10.0  # for what a sandbox's last command left running (auto stop)
STATE_FILE = "state.json"  # what a sandbox's monitor records (monitor.py), beside sandbox.json
LOG_FILE = "output.log"


def logs_dir(record: SandboxRecord) -> Path:
    """Where a sandbox's main command's output is kept (monitor.Log), beside its changes."""
    return record.path / "logs"
_STOPPED_WAIT_SECONDS = 30.0  # for the monitor to record the end, once PID 1 is dead


def read_state(record: SandboxRecord) -> dict[str, Any]:
    """What the sandbox's monitor last recorded (monitor.py), or {} (never started)."""
    try:
        return read_json(record.path / STATE_FILE)
    except (OSError, ValueError):
        return {}


def holder(store: Store, record: SandboxRecord) -> Holder | None:
    """The running sandbox's PID 1 as recorded, or None when the sandbox is stopped."""
    if not is_locked(store.lock("live", record.name).path):
        return None
    state = read_state(record)
    if state.get("status") != "running":
        return None
    try:
        return Holder(int(state["pid"]), int(state["start_time"]), tuple(str(c) for c in state.get("cgroups", ())))
    except (KeyError, TypeError, ValueError):
        return None


def pid_namespace(found: Holder) -> str | None:
    """The PID namespace of ``found`` while it is that sandbox's PID 1, else None: the pid in
    the store is never trusted alone (it may be another process's by now)."""
    pidfd = open_holder(found)
    if pidfd is None:
        return None
    try:
        namespace = os.readlink(f"/proc/{found.pid}/ns/pid")
        signal.pidfd_send_signal(pidfd, 0)  # still that PID 1: the namespace read was its
        return namespace
    except (OSError, ProcessLookupError):
        return None
    finally:
        os.close(pidfd)


def _members(namespace: str, init: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != init:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    pids.append(int(entry))
    return pids


def processes(found: Holder) -> list[int]:
    """The host pids of the sandbox's processes but its PID 1 (those in its PID namespace)."""
    namespace = pid_namespace(found)
    return [] if namespace is None else _members(namespace, found.pid)


def status(store: Store, record: SandboxRecord) -> dict[str, Any]:
    """``state`` (running or stopped); ``pid`` (its PID 1 on the host), ``started`` and
    ``processes`` (how many, PID 1 not counted) while running; ``finished`` and ``exit_code``
    (None when its monitor was killed) once stopped after a run. Absent ones are None."""
    found = holder(store, record)
    state = read_state(record)
    if found is not None:
        return {"state": "running", "pid": found.pid, "started": state.get("started"),
                "processes": len(processes(found)), "finished": None, "exit_code": None}
    return {"state": "stopped", "pid": None, "started": None, "processes": None,
            "finished": state.get("finished"), "exit_code": state.get("exit_code")}


def _arrive(store: Store, record: SandboxRecord, transition: Lock) -> SandboxRecord:
    """Read the sandbox again once its transition lock is held: an rm may have come first."""
    try:
        return store.sandbox(record.name)
    except NotFoundError:
        transition.path.unlink(missing_ok=True)  # ours, made by the acquire: the sandbox is gone
        raise


def start(store: Store, record: SandboxRecord, config: SandboxConfig, auto: bool) -> Holder:
    """Start the sandbox (its transition lock held by the caller) with its main command if it
    has one (run -d, in sandbox.json), else held; return its PID 1."""
    image = image_of(store, record)
    command = tuple(str(arg) for arg in record.meta.get("command") or ())
    log = None
    if command:
        log = logs_dir(record)
        log.mkdir(mode=0o700, exist_ok=True)
        log = log / LOG_FILE
    from sandboxmgr import monitor  # only a start pays for it (threading): not a joining exec

    monitor.spawn(store, record, hold_spec(store, record, image, config, command or None),
                  holds(store, image, config.caches), auto and not command, log)
    found = holder(store, record)
    if found is None:
        raise SandboxError(f"sandbox {record.name!r} stopped as soon as it started", hint="see 'sandboxmgr doctor'")
    ticket.issue(store, record, found, auto_stop=auto and not command)
    return found


def run_in(store: Store, record: SandboxRecord, options: SandboxConfig, keep_running: bool = False) -> int:
    """Run a command in a named sandbox with its saved config (``options`` on top), joining it
    when it runs, else starting it (to stop once no command is left, unless ``keep_running``)."""
    transition = store.lock("sandbox", record.name)
    use = store.lock("use", record.name)
    transition.acquire(True, "", "")
    try:
        record = _arrive(store, record, transition)
        use.acquire_shared()
        config = SandboxConfig.from_json(record.meta["settings"]).merged(options)
        found = holder(store, record)
        if found is None:
            found = start(store, record, config, auto=not keep_running)
        elif options.limits is not None:
            raise SandboxError(f"sandbox {record.name!r} is running: its limits were set when it started",
                               hint=f"stop it first (sandboxmgr stop {record.name}), or run without limits")
        pidfd = open_holder(found)
        if pidfd is None:
            raise SandboxError(f"sandbox {record.name!r} stopped while the command was arriving",
                               hint="run the command again")
    except BaseException:
        use.release()
        raise
    finally:
        transition.release()
    try:
        spec = join_spec(store, config)
        return run_joined(found, pidfd, spec, program(spec.seccomp, spec.seccomp_cache) if spec.seccomp else None)
    finally:
        os.close(pidfd)
        _leave(store, record, use)


def _leave(store: Store, record: SandboxRecord, use: Lock) -> None:
    """A command ended: let go of the sandbox, and stop it when it was started for commands
    and this was the last one (before returning, so that an ``rm`` right after finds it stopped)."""
    use.release()  # first: an rm -f holds the transition lock while it waits for the commands to go
    transition = store.lock("sandbox", record.name)
    transition.acquire(True, "", "")
    with transition:
        if not (record.path / "sandbox.json").exists():  # removed meanwhile (rm -f)
            transition.path.unlink(missing_ok=True)
            return
        if not read_state(record).get("auto"):
            return
        last = store.lock("use", record.name)
        if last.try_acquire():  # no other command in it
            with last:
                _stop(store, record, AUTO_GRACE_SECONDS)


def run_detached(store: Store, record: SandboxRecord, command: tuple[str, ...]) -> None:
    """``run -d``: make ``command`` the sandbox's main command and start it; the sandbox stops
    when it ends, and ``start`` runs it again, as a container's."""
    with _transition(store, record) as current:
        if holder(store, current) is not None:
            raise SandboxError(f"sandbox {current.name!r} is running", hint="pick another --name")
        meta = dict(current.meta) | {"command": list(command)}
        write_json(current.path / "sandbox.json", meta)
        start(store, store.sandbox(current.name), SandboxConfig.from_json(meta["settings"]), auto=False)


def wait(store: Store, record: SandboxRecord) -> int | None:
    """Until the sandbox is stopped; its exit status (None: its monitor was killed)."""
    live = store.lock("live", record.name)
    live.acquire_shared()  # the monitor holds it exclusively while the sandbox runs
    live.release()
    code = read_state(record).get("exit_code")
    return code if isinstance(code, int) else None


def logs(store: Store, record: SandboxRecord, write: Callable[[bytes], None], tail: int | None = None,
         follow: bool = False) -> None:
    """Give ``write`` the main command's output (the last ``tail`` lines); with ``follow``, what
    it writes next too, until the sandbox stops. The files are the sandbox's output: anything
    may be in them, and they are read as bytes, never through a link."""
    path = logs_dir(record) / LOG_FILE
    data = b"".join(_read(path.with_name(LOG_FILE + ".1")) + _read(path))
    if tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
    write(data)
    if not follow:
        return
    position, inode = _where(path)
    while True:
        running = holder(store, record) is not None
        now_inode = _where(path)[1]
        if now_inode != inode:  # rotated: the rest of the old one is in .1; go on with the new one
            position, inode = 0, now_inode
        chunk = b"".join(_read(path, position))
        if chunk:
            write(chunk)
            position += len(chunk)
        elif not running:
            return
        else:
            time.sleep(0.1)


def _read(path: Path, offset: int = 0) -> list[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # none yet, or not a regular file of ours (a link): nothing to show
        return []
    with os.fdopen(fd, "rb") as handle:
        handle.seek(offset)
        return [handle.read()]


def _where(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return 0, 0
    return info.st_size, info.st_ino


def start_verb(store: Store, record: SandboxRecord) -> bool:
    """``sandboxmgr start``: start it to stay running; False when it already ran."""
    with _transition(store, record) as current:
        found = holder(store, current)
        if found is not None:
            state = read_state(current)
            if state.get("auto"):  # started for commands: now it stays
                write_json(current.path / STATE_FILE, state | {"auto": False})
                ticket.issue(store, current, found, auto_stop=False)
            return False
        start(store, current, SandboxConfig.from_json(current.meta["settings"]), auto=False)
        return True


def stop(store: Store, record: SandboxRecord, grace: float = DEFAULT_STOP_SECONDS) -> bool:
    """Stop the sandbox: SIGTERM to every process, SIGKILL after ``grace`` seconds (as
    ``docker stop``); return once it is stopped and recorded. False when it was not running."""
    with _transition(store, record) as current:
        return _stop(store, current, grace)


def _stop(store: Store, record: SandboxRecord, grace: float) -> bool:
    found = holder(store, record)
    if found is None:
        return False
    namespace = pid_namespace(found)
    pidfd = open_holder(found)
    if pidfd is not None:
        try:
            from sandboxmgr.monitor import terminate

            terminate(pidfd, grace)
        finally:
            os.close(pidfd)
    deadline = time.monotonic() + _STOPPED_WAIT_SECONDS
    look = time.monotonic() + 0.2
    while is_locked(store.lock("live", record.name).path):
        if time.monotonic() > deadline:
            raise SandboxError(f"sandbox {record.name!r} does not stop: its monitor holds on",
                               hint="see 'sandboxmgr doctor'")
        if namespace is not None and time.monotonic() > look:
            _resume_suspended_execs(namespace)
            look = time.monotonic() + 0.5
        time.sleep(0.01)
    return True


def _resume_suspended_execs(namespace: str) -> None:
    """A joined command is the child of its exec on the host, and the kernel keeps PID 1 (so
    the sandbox) until that exec reaps it: an exec suspended by Ctrl-Z would hold the stop up
    for as long as it stays suspended. Resume those whose command is dead (a zombie): each
    reaps it and returns its status (137), as the stop meant."""
    for pid in _members(namespace, 0):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _proc_state(pid) != "Z":
                continue
            parent = _parent(pid)
            target = os.pidfd_open(parent)
            try:  # still that zombie's parent (not a pid used again), and stopped
                if _parent(pid) == parent and _proc_state(pid) == "Z" and _proc_state(parent) == "T":
                    signal.pidfd_send_signal(target, signal.SIGCONT)
            finally:
                os.close(target)


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def kill(store: Store, record: SandboxRecord, sig: signal.Signals) -> int:
    """Send ``sig`` to every process of the running sandbox; SIGKILL kills it whole at once
    (its PID 1). Returns how many processes got it."""
    found = holder(store, record)
    if found is None:
        raise SandboxError(f"sandbox {record.name!r} is not running", hint=f"start it: sandboxmgr start {record.name}")
    if sig == signal.SIGKILL:
        with _transition(store, record) as current:
            _stop(store, current, 0)
        return 1
    namespace = pid_namespace(found)
    if namespace is None:
        raise SandboxError(f"sandbox {record.name!r} is not running", hint=f"start it: sandboxmgr start {record.name}")
    sent = 0
    for pid in _members(namespace, found.pid):
        with contextlib.suppress(OSError):  # ended meanwhile (ProcessLookupError)
            target = os.pidfd_open(pid)
            try:  # and not a pid used again since it was listed: the process the pidfd holds
                if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                    signal.pidfd_send_signal(target, sig)
                    sent += 1
            finally:
                os.close(target)
    return sent


def remove(store: Store, record: SandboxRecord, force: bool = False) -> None:
    """Remove the sandbox; a running one only with ``force`` (it is killed first, as
    ``docker rm -f``)."""
    name = record.name
    with _transition(store, record) as current:  # waits for a start or stop under way
        if holder(store, current) is not None:
            if not force:
                raise BusyError(f"sandbox {name!r} is running",
                                hint=f"stop it first (sandboxmgr stop {name}), or: sandboxmgr rm -f {name}")
            _stop(store, current, 0)
        use = store.lock("use", name)
        use.acquire(True, "", "")  # the commands' managers, their commands dead, let go
        with use:
            store.remove_sandbox(current)
            for kind in ("use", "live"):
                store.lock(kind, name).path.unlink(missing_ok=True)


@contextlib.contextmanager
def _transition(store: Store, record: SandboxRecord) -> Any:
    """The sandbox's transition lock, once a start or stop under way (seconds, at most a stop's
    grace time) is over; the sandbox as it is then."""
    transition = store.lock("sandbox", record.name)
    transition.acquire(True, "", "")
    with transition:
        yield _arrive(store, record, transition)
