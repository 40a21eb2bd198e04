"""The per-profile job runner that ``matrix`` and ``package build``/``test`` share.

A job is one profile's work, done by a worker process (``fork``: the manager stays single
threaded, as namespaces require). The runner starts up to ``-j`` of them, waits for each,
redraws the live view meanwhile, and with ``--fail-fast`` stops the rest at the first
failure. A signal (Ctrl-C, SIGTERM, SIGHUP) is forwarded to every running worker; the jobs
not started are cancelled. What a job does and how its worker's end becomes a result is
the job's (:class:`Job`); the reports (JUnit) are made of the results' common fields.

Also here, for jobs made of several steps: :func:`spawn`, one command in a named sandbox by
a worker, and :func:`run_step`, which waits for it with a timeout and kills it on anything
that ends the wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sandboxmgr import live
from sandboxmgr.errors import SandboxError
from sandboxmgr.pid1 import exit_status
from sandboxmgr.store import SandboxRecord, Store

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Outcome(Protocol):
    """What the runner, the live view and the reports read of a job's result."""

    name: str
    status: str  # pending, running, passed, failed, cancelled
    started: float | None
    duration: float | None
    reason: str

    @property
    def shown(self) -> str:
        """A few words after the time, in the live view and its log lines: ``exit 2``."""

    @property
    def failure(self) -> tuple[str, str]:
        """The JUnit failure's type (machine-readable: an exit status, a stage) and message."""

    @property
    def log_path(self) -> Path | None: ...


class Job(Protocol):
    result: Any  # an Outcome

    def start(self) -> int:
        """Start the job's worker; its pid."""

    def finish(self, status: int, stopped: bool) -> None:
        """The worker ended with wait status ``status`` (``stopped``: the runner stopped it):
        fill in the result, clean up what the job left (unless kept)."""


View = Callable[[list[Any]], None]


def run_jobs(jobs: Sequence[Job], parallel: int, fail_fast: bool, view: View) -> bool:
    """Run every job, ``parallel`` at once; whether the run was stopped (a signal, --fail-fast)."""
    results = [job.result for job in jobs]
    running: dict[int, Job] = {}  # worker pid -> job
    pending = list(jobs)
    starting: Job | None = None
    stop = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        while pending or running:
            while pending and len(running) < parallel and not stop:
                starting = pending.pop(0)
                starting.result.status, starting.result.started = "running", time.monotonic()
                running[starting.start()] = starting
                starting = None
                view(results)
            if not running:
                break
            pid, status = _wait(view, results)
            if pid not in running:
                continue
            job = running.pop(pid)
            job.result.duration = time.monotonic() - (job.result.started or time.monotonic())
            job.finish(status, stop)
            view(results)
            if fail_fast and job.result.status == "failed" and (pending or running):
                forward(signal.SIGTERM, None)
        for job in pending:
            job.result.status = "cancelled"
        view(results)
    except BaseException:
        # Something failed in the manager itself (an image, a sandbox that could not be
        # made): stop the workers and let each job clean up before reporting it.
        forward(signal.SIGTERM, None)
        for pid, job in running.items():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            job.result.status = "cancelled"
            job.finish(0, True)
        if starting is not None:
            starting.result.status = "cancelled"
            starting.finish(0, True)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stop


def _wait(view: View, results: list[Any]) -> tuple[int, int]:
    """The next worker to end; the view is redrawn meanwhile (elapsed times)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return -1, 0
        if pid:
            return pid, status
        select.select([], [], [], 0.25)
        view(results)


# --- a job done in Python, in a worker ----------------------------------------------------------


class Stopped(BaseException):
    """A worker of :func:`fork_job` was told to stop (a signal): its cleanups run, then it ends."""


def fork_job(body: Callable[[], dict[str, Any]], report: Path) -> int:
    """A worker that runs ``body`` and writes what it returns to ``report`` as JSON; its pid.

    A signal raises :class:`Stopped` in it, so that its ``finally`` blocks (a sandbox's
    removal) run before it ends; so does its manager's death."""
    report.unlink(missing_ok=True)  # an earlier run's, which must not pass for this one's
    pid = os.fork()
    if pid != 0:
        return pid
    status = 1  # pragma: no cover - the worker
    try:  # pragma: no cover - the worker
        def stopped(_signum: int, _frame: object) -> None:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_IGN)  # once: the cleanup must not be cut short
            raise Stopped

        for sig in SIGNALS:
            signal.signal(sig, stopped)
        from sandboxmgr import linux

        linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGTERM)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        outcome = body()
        # Made afresh, never through a link put in its place meanwhile (a --results DIR another can write).
        handle = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(outcome))
        status = 0
    except Stopped:
        status = 130
    except SandboxError as exc:
        os.write(2, f"sandboxmgr: error: {exc.message}\n".encode())
    except BaseException as exc:  # the worker reports everything, then exits
        os.write(2, f"sandboxmgr: error: {exc!r}\n".encode())
    finally:
        os._exit(status)


def read_report(report: Path) -> dict[str, Any] | None:
    """What a :func:`fork_job` worker reported, or None if it ended before it could."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    report.unlink(missing_ok=True)
    return data if isinstance(data, dict) else None


# --- steps: commands in a named sandbox --------------------------------------------------------


def spawn(store: Store, record: SandboxRecord, log: Path, command: tuple[str, ...], user: str | None = None,
          append: bool = False) -> int:
    """A worker process that runs ``command`` in the named sandbox (as ``user``, else as its
    config says), its output in ``log``; its pid."""
    from sandboxmgr.config import options
    from sandboxmgr.errors import EXIT_MANAGER

    mode = os.O_APPEND if append else os.O_TRUNC
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | mode | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the worker
        status = EXIT_MANAGER
        try:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            from sandboxmgr import linux

            linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(handle, 1)
            os.dup2(handle, 2)
            status = live.run_in(store, record, options(argv=command, user=user))
        except SandboxError as exc:
            os.write(2, f"sandboxmgr: error: {exc.message}\n".encode())
            status = exc.exit_code
        except BaseException as exc:  # the worker reports everything, then exits
            os.write(2, f"sandboxmgr: error: {exc}\n".encode())
        finally:
            os._exit(status)
    os.close(handle)
    return pid


class TimedOut(Exception):
    """A step ran longer than its timeout; its worker (and so its sandbox) was killed."""


def run_step(store: Store, record: SandboxRecord, log: Path, command: tuple[str, ...], user: str | None,
             append: bool, timeout: float | None = None) -> int:
    """``command`` in the sandbox by a worker (:func:`spawn`); its exit status. The worker is
    killed on a timeout (TimedOut) and on anything else that ends the wait (Ctrl-C, Stopped),
    and its sandbox stopped at once (the command would run on in it otherwise)."""
    pid = spawn(store, record, log, command, user=user, append=append)
    try:
        handle = os.pidfd_open(pid)
        try:
            if not select.select([handle], [], [], timeout)[0]:
                raise TimedOut
        finally:
            os.close(handle)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        live.stop(store, record, 0)
        raise
    return exit_status(status)


def tail(path: Path | None, lines: int) -> str:
    """The last ``lines`` lines of a log (of a line's usual length), or "" if it cannot be read."""
    if path is None:
        return ""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 200 * lines))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- reports ------------------------------------------------------------------------------------


# What XML 1.0 has no place for: a build's colours (ESC) in a log's tail made a report no reader takes.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    return NOT_XML.sub("?", text)


def junit(results: Sequence[Outcome], suite_name: str, classname: str, output: Callable[[Any], str],
          cause: str | None = None) -> str:
    """JUnit XML, as GitLab, Jenkins and GitHub read it: one testcase per profile; a failure's
    ``type`` is the result's machine-readable cause, also the case's property named ``cause``
    when given (``stage``)."""
    from xml.etree import ElementTree

    failures = sum(1 for r in results if r.status == "failed")
    skipped = sum(1 for r in results if r.status == "cancelled")
    suite = ElementTree.Element("testsuite", {
        "name": suite_name, "tests": str(len(results)), "failures": str(failures), "errors": "0",
        "skipped": str(skipped), "time": f"{sum(r.duration or 0 for r in results):.3f}",
    })
    for result in results:
        case = ElementTree.SubElement(suite, "testcase", {
            "classname": classname, "name": result.name, "time": f"{result.duration or 0:.3f}"})
        if result.status == "failed":
            kind, message = result.failure
            if cause:
                properties = ElementTree.SubElement(case, "properties")
                ElementTree.SubElement(properties, "property", {"name": cause, "value": kind})
            failure = ElementTree.SubElement(case, "failure", {"message": xml_text(message), "type": kind})
            failure.text = xml_text(tail(result.log_path, 50))
        elif result.status == "cancelled":
            ElementTree.SubElement(case, "skipped", {"message": "cancelled"})
        out = ElementTree.SubElement(case, "system-out")
        out.text = xml_text(output(result))
    suites = ElementTree.Element("testsuites")
    suites.append(suite)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
