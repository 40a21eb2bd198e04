"""Test a project against many profiles in one command.

Each matrix entry is a profile (shipped, a glob of them, or one written inline
in the project file) plus the project's ``prepare`` steps for it. The prepare
steps become setup layers on top of the profile's image, so a second matrix run
reuses them. Every entry then runs the command in a sandbox of its own, with
the project directory at ``/src`` as a copy-on-write view: builds inside never
write into the user's tree and never see each other's products.

Entries run in parallel worker processes (``fork``: the manager stays single
threaded, as namespaces require); a worker runs one sandbox with its output in
the entry's log file. The sandbox is a named one (``matrix-...``) so that
``--keep-failed`` can keep it; otherwise it is removed when the entry ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import live
from sandboxmgr.errors import SandboxError, warn
from sandboxmgr.mounts import BindMount
from sandboxmgr.pid1 import exit_status
from sandboxmgr.project import Entry, Project
from sandboxmgr.store import SandboxRecord, Store

# --- running ------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    profile: str
    status: str = "pending"  # pending, running, passed, failed, cancelled
    exit_code: int | None = None
    started: float | None = None
    duration: float | None = None
    log: Path | None = None
    sandbox: str | None = None  # kept with --keep-failed
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "status": self.status, "exit_code": self.exit_code,
                "duration": None if self.duration is None else round(self.duration, 2),
                "log": str(self.log) if self.log else None, "sandbox": self.sandbox, "reason": self.reason}


View = Callable[[list[Result]], None]


def run(store: Store, project: Project, selected: list[Entry], command: tuple[str, ...], jobs: int,
        fail_fast: bool, keep_failed: bool, logs: Path, view: View) -> list[Result]:
    """Run ``command`` for every entry; the images must be built already."""
    logs.mkdir(parents=True, exist_ok=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    results = [Result(e.name, e.profile.name, log=logs / f"{e.name}.log") for e in selected]
    running: dict[int, int] = {}  # worker pid -> index
    pending = list(range(len(selected)))
    stop = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while pending or running:
            while pending and len(running) < jobs and not stop:
                index = pending.pop(0)
                result = results[index]
                running[_start(store, project, selected[index], result, run_id, command)] = index
                result.status, result.started = "running", time.monotonic()
                view(results)
            if not running:
                break
            pid, status = _wait(view, results)
            if pid not in running:
                continue
            index = running.pop(pid)
            result = results[index]
            result.duration = time.monotonic() - (result.started or time.monotonic())
            result.exit_code = exit_status(status)
            result.status = "passed" if result.exit_code == 0 else ("cancelled" if stop else "failed")
            if result.status == "failed":
                result.reason = _reason(result)
                fail_fast_hit = fail_fast
            else:
                fail_fast_hit = False
            _finish(store, result, keep=keep_failed and result.status == "failed")
            view(results)
            if fail_fast_hit and pending:
                stop = True
                forward(signal.SIGTERM, None)
        for index in pending:
            results[index].status = "cancelled"
            results[index].sandbox = None
        view(results)
    except BaseException:
        # Something failed in the manager itself (an image, a sandbox that could not be
        # made): stop the workers and remove their sandboxes before reporting it.
        forward(signal.SIGTERM, None)
        _abort(store, running, results)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


def _start(store: Store, project: Project, entry: Entry, result: Result, run_id: str,
           command: tuple[str, ...]) -> int:
    """Make the entry's sandbox and start its worker; the worker's pid."""
    from sandboxmgr import config, images
    from sandboxmgr.resolve import create_sandbox

    image = images.ensure_image(store, entry.profile, lambda _m: None)
    name = f"matrix-{project.slug}-{entry.name}-{run_id}"[:120].rstrip(".-")
    result.sandbox = name
    options = config.options(env=dict(project.env), workdir=project.workdir,
                             binds=(BindMount(project.root, project.workdir, copy_on_write=True),))
    record = create_sandbox(store, name, image, entry.profile, options)
    assert result.log is not None
    return spawn(store, record, result.log, command)


def _abort(store: Store, running: dict[int, int], results: list[Result]) -> None:
    """After the workers were told to stop: wait for each, and remove every sandbox made."""
    for pid, index in running.items():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        _finish(store, results[index], keep=False)
    for result in results:
        if result.status == "pending" and result.sandbox is not None:
            with contextlib.suppress(SandboxError):
                live.remove(store, store.sandbox(result.sandbox), force=True)


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
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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


def _wait(view: View, results: list[Result]) -> tuple[int, int]:
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


def _reason(result: Result) -> str:
    """The last line the failed command printed, as the summary's one-line reason."""
    if result.log is None:
        return ""
    try:
        lines = [line for line in result.log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _finish(store: Store, result: Result, keep: bool) -> None:
    if result.sandbox is None:
        return
    if keep:
        return
    try:
        live.remove(store, store.sandbox(result.sandbox), force=True)
    except SandboxError as exc:
        warn(f"cannot remove {result.sandbox}: {exc.message}")
    result.sandbox = None


# --- reports ------------------------------------------------------------------------------


def junit(results: list[Result], project: Project, command: tuple[str, ...]) -> str:
    """JUnit XML, as GitLab, Jenkins and GitHub read it: one testcase per profile."""
    from xml.etree import ElementTree

    failures = sum(1 for r in results if r.status == "failed")
    skipped = sum(1 for r in results if r.status == "cancelled")
    suite = ElementTree.Element("testsuite", {
        "name": f"sandboxmgr matrix: {project.slug}", "tests": str(len(results)),
        "failures": str(failures), "errors": "0", "skipped": str(skipped),
        "time": f"{sum(r.duration or 0 for r in results):.3f}",
    })
    for result in results:
        case = ElementTree.SubElement(suite, "testcase", {
            "classname": f"matrix.{project.slug}", "name": result.name, "time": f"{result.duration or 0:.3f}"})
        if result.status == "failed":
            failure = ElementTree.SubElement(case, "failure", {
                "message": f"exit code {result.exit_code}: {result.reason}", "type": "exit-status"})
            failure.text = _tail(result.log)
        elif result.status == "cancelled":
            ElementTree.SubElement(case, "skipped", {"message": "cancelled"})
        out = ElementTree.SubElement(case, "system-out")
        out.text = f"command: {' '.join(command)}\nlog: {result.log}\n"
    suites = ElementTree.Element("testsuites")
    suites.append(suite)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _tail(log: Path | None, lines: int = 50) -> str:
    if log is None:
        return ""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def as_json(results: list[Result]) -> str:
    return json.dumps([r.to_json() for r in results], indent=2)
