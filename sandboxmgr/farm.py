"""A farm: matrix jobs run by worker machines that take them from a Redis broker.

The queue is ours, on plain redis-py (README, "Farm"): a job message goes onto the list
``sandboxmgr:farm:queue:NAME``; a worker's slot moves it atomically (BLMOVE) to its own
``taken:SLOT`` list, says ``started`` on the job's reply list, refreshes ``alive:SLOT`` (a key
that expires after :data:`HEARTBEAT_TTL` seconds) while the job runs, and pushes the result.
The caller is farmcall.py; what a dead slot or a finished job leaves, farmreap.py. Ctrl-C of
a caller (or its deadline) sets the job's ``cancel`` key, which a slot checks before it starts
a job and every half second while it runs one.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from sandboxmgr import farmjob, farmreap
from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.runner import SIGNALS, fork_job, read_report

if TYPE_CHECKING:
    from sandboxmgr.profile import ProfileRegistry
    from sandboxmgr.store import Store

PREFIX = "sandboxmgr:farm:"
HEARTBEAT_TTL = 3  # seconds without a heartbeat before a slot counts as dead
TICK = 0.5
REPLY_TTL = 3600
CANCEL_WAIT = 15.0  # how long a cancelled caller waits for the worker to stop the job


def redacted(url: str) -> str:
    """The broker's address without its password, for messages."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port  # .port raises for one that is not a number
    except ValueError:
        return "(a URL that cannot be read)"
    return shown(f"{parts.scheme}://{host}{':' + str(port) if port else ''}{parts.path}")


def connect(url: str) -> Any:
    """A client of the broker at ``url`` (redis:// or rediss://, TLS), checked with a PING."""
    import redis

    try:
        scheme, _port, query = urlsplit(url).scheme, urlsplit(url).port, parse_qs(urlsplit(url).query)
    except ValueError as exc:  # never the URL itself in the line: it holds the password
        raise SandboxError(f"the broker's URL cannot be read ({exc})",
                           hint="give --farm redis://:PASSWORD@HOST:PORT/0") from None
    if set(query) - {"db"}:  # redis-py makes the rest its client's options (ssl_cert_reqs=none: no TLS checks)
        raise SandboxError(f"the broker's URL has a query other than ?db=N: {shown(sorted(query))}",
                           hint="give --farm redis://:PASSWORD@HOST:PORT/0 (rediss:// for TLS, checked)")
    if scheme not in ("redis", "rediss", "unix"):
        raise SandboxError(f"the broker {redacted(url)} is not a redis://, rediss:// or unix:// URL",
                           hint="give --farm redis://:PASSWORD@HOST:PORT/0")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=10)
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise SandboxError(f"cannot reach the farm's broker {redacted(url)}: {exc}",
                           hint="is its redis-server running, and the URL's password right?") from None
    return client


# --- the worker ---------------------------------------------------------------------------------


Run = Callable[[dict[str, Any], Path], dict[str, Any]]


def serve(url: str, queue: str, concurrency: int, run: Run, say: Callable[[str], None], reports: Path,
          keep: int) -> int:
    """Take jobs from ``queue`` until a signal, ``concurrency`` at once (a slot process each);
    ``run`` does one job in a forked process, in a directory of its own under ``reports`` (the
    ``keep`` newest stay), and returns its result's fields."""
    connect(url)
    reports.mkdir(parents=True, exist_ok=True)
    farmreap.prune(reports, keep)  # a killed worker's too: nothing holds their lock
    slots = {}
    for number in range(concurrency):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a slot
            status = 1
            try:
                _slot(url, queue, f"{socket.gethostname()}-{os.getpid()}-{number}", run, say, reports, keep)
                status = 0
            except SandboxError as exc:
                say(f"farm worker: slot {number} stopped: {exc.message}")
            except Exception as exc:  # the broker went away mid-command, most often
                say(f"farm worker: slot {number} stopped: {exc!r}")
            finally:
                os._exit(status)
        slots[pid] = number
    say(f"farm worker: {concurrency} slot(s) taking jobs from {redacted(url)} queue {queue!r}")
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in slots:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, stop) for sig in SIGNALS}
    try:
        while slots:
            # Polled, as runner.run_jobs does: a SIGTERM due just before a blocking waitpid would
            # wait with it until a slot ended - for a worker's slots, maybe never.
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                select.select([], [], [], 0.25)
            else:
                slots.pop(pid, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else 1


def _slot(url: str, queue: str, slot: str, run: Run, say: Callable[[str], None], reports: Path,
          keep: int) -> None:  # pragma: no cover - a slot
    from sandboxmgr import linux

    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)  # the worker's death is its slots'
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in SIGNALS:
        signal.signal(sig, stop)
    client = connect(url)
    taken = PREFIX + "taken:" + slot
    while not stopping:
        client.set(PREFIX + "alive:" + slot, "1", ex=HEARTBEAT_TTL)
        with contextlib.suppress(InterruptedError):
            raw = client.blmove(PREFIX + "queue:" + queue, taken, 1, "RIGHT", "LEFT")
            if raw is not None:
                client.expire(taken, REPLY_TTL)  # a killed slot's list goes, reaped or not
                _take(client, raw, slot, run, say, lambda: stopping, reports)
                client.lrem(taken, 1, raw)
                farmreap.prune(reports, keep)
    client.delete(PREFIX + "alive:" + slot)


def _take(client: Any, raw: bytes, slot: str, run: Run,
          say: Callable[[str], None], stopping: Callable[[], bool], reports: Path) -> None:  # pragma: no cover - a slot
    try:
        job = farmjob.parse_job(raw)
    except farmjob.MessageError as exc:
        say(f"farm worker {slot}: refused a message: {exc.message}")
        job_id = farmjob.job_id_of(raw)
        if job_id is not None:  # its caller, if it is one, hears why instead of waiting
            reply = PREFIX + "reply:" + job_id
            client.rpush(reply, farmjob.make_result("failed", None, f"refused by farm worker {slot}: {exc.message}",
                                                    b"", slot))
            client.expire(reply, REPLY_TTL)
        return
    reply = PREFIX + "reply:" + job["id"]
    if client.exists(PREFIX + "cancel:" + job["id"]):
        client.rpush(reply, farmjob.make_result("cancelled", None, "cancelled before it started", b"", slot))
    else:
        client.rpush(reply, farmjob.started(slot))
        say(f"farm worker {slot}: {job_line(job)}")
        outcome = _supervise(client, job, slot, run, stopping, reports)
        client.rpush(reply, farmjob.make_result(outcome["status"], outcome["exit_code"], outcome["reason"],
                                                outcome["log"], slot, outcome.get("extra")))
    client.expire(reply, REPLY_TTL)


def job_line(job: dict[str, Any]) -> str:
    """A job as its worker prints it: its caller's command may hold terminal escapes."""
    what = f"package build {job['build']['path']}" if job.get("kind") == "package" else " ".join(job["command"])
    line = f"{job['profile']}: {what[:80]}"
    return "".join(char if char.isprintable() else "?" for char in line)


def _supervise(client: Any, job: dict[str, Any], slot: str, run: Run, stopping: Callable[[], bool],
               reports: Path) -> dict[str, Any]:  # pragma: no cover - a slot
    """``run(job)`` in a forked process, in a directory of its own; meanwhile the heartbeat, and a
    cancel (or the worker's own stop) stops it."""
    with farmreap.job_dir(reports, job["id"]) as where:
        outcome = _watch(client, job, slot, fork_job(lambda: run(job, where), where / "report.json"), stopping,
                         where / "report.json")
        if job["kind"] == "package":  # its files go to the broker while its directory is locked
            from sandboxmgr.farmpackage import reply_extra

            outcome["extra"] = reply_extra(client, job["id"], outcome,
                                           lambda: client.set(PREFIX + "alive:" + slot, "1", ex=HEARTBEAT_TTL))
        return outcome


def _watch(client: Any, job: dict[str, Any], slot: str, pid: int, stopping: Callable[[], bool],
           report: Path) -> dict[str, Any]:  # pragma: no cover - a slot
    why = ""  # "cancelled" (its caller), "stopped" (this worker)
    while True:
        with client.pipeline(transaction=False) as beat:
            beat.set(PREFIX + "alive:" + slot, "1", ex=HEARTBEAT_TTL).expire(PREFIX + "taken:" + slot, REPLY_TTL)
            beat.execute()
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if not why:
            why = "stopped" if stopping() else "cancelled" if client.exists(PREFIX + "cancel:" + job["id"]) else ""
            if why:
                os.kill(pid, signal.SIGTERM)
        time.sleep(TICK)
    data = read_report(report)
    if why == "stopped":  # not the caller's doing: a failure it should hear of, not a cancel
        return {"status": "failed", "exit_code": None, "log": data["log"].encode() if data else b"",
                "reason": f"farm worker {slot} was stopped mid-job: run it again"}
    if data is None:
        return {"status": "cancelled" if why else "failed", "exit_code": None, "log": b"",
                "reason": "cancelled" if why else f"the job's process on {slot} ended without a result"}
    data["log"] = data["log"].encode()
    return data


def run_matrix_job(store: Store, registry: ProfileRegistry, job: dict[str, Any], logs: Path) -> dict[str, Any]:
    """One matrix entry from a checked job message, in this worker's store, with its own profile;
    its log in ``logs``."""
    from sandboxmgr import images, matrix
    from sandboxmgr import project as project_file

    name = job["profile"]
    try:
        with farmjob.job_tree(store, registry, job) as root:
            project = project_file.Project(path=None, root=root, command=tuple(job["command"]),
                                           workdir=job["workdir"], env=dict(job["env"]))
            (entry,) = project_file.entries([name], project, registry)
            images.ensure_image(store, entry.profile, lambda _message: None)
            (result,) = matrix.run(store, project, [entry], project.command, 1, False, False, logs,
                                   lambda _results: None)
    except SandboxError as exc:
        return _refused(exc.message)
    return {"status": result.status, "exit_code": result.exit_code, "reason": result.reason,
            "log": farmjob.log_tail(result.log).decode(errors="replace")}


def _refused(reason: str) -> dict[str, Any]:
    return {"status": "failed", "exit_code": None, "reason": reason, "log": f"sandboxmgr farm: {reason}\n"}
