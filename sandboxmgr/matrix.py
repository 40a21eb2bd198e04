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

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import live
from sandboxmgr.errors import SandboxError, warn
from sandboxmgr.mounts import BindMount
from sandboxmgr.pid1 import exit_status
from sandboxmgr.project import Entry, Project
from sandboxmgr.runner import View, run_jobs, spawn, tail
from sandboxmgr.runner import junit as runner_junit
from sandboxmgr.store import Store

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
    stage: str | None = None  # a farm's: timeout (no worker took it, or it ran too long), lost (its worker died)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "status": self.status, "exit_code": self.exit_code,
                "duration": None if self.duration is None else round(self.duration, 2),
                "log": str(self.log) if self.log else None, "sandbox": self.sandbox, "reason": self.reason,
                "stage": self.stage}

    @property
    def shown(self) -> str:
        return "" if self.exit_code is None else f"exit {self.exit_code}"

    @property
    def failure(self) -> tuple[str, str]:
        return self.stage or "exit-status", f"exit code {self.exit_code}: {self.reason}"

    @property
    def log_path(self) -> Path | None:
        return self.log


class ProjectJob:
    """One entry: its sandbox, made by the manager, with the project at ``/src``; its worker
    runs the command there (runner.spawn)."""

    def __init__(self, store: Store, project: Project, entry: Entry, result: Result, run_id: str,
                 command: tuple[str, ...], keep_failed: bool) -> None:
        self.store, self.project, self.entry, self.result = store, project, entry, result
        self.run_id, self.command, self.keep_failed = run_id, command, keep_failed

    def start(self) -> int:
        """Make the entry's sandbox and start its worker; the worker's pid."""
        from sandboxmgr import config, images
        from sandboxmgr.resolve import create_sandbox

        entry, project = self.entry, self.project
        image = images.ensure_image(self.store, entry.profile, lambda _m: None)
        name = f"matrix-{project.slug}-{entry.name}-{self.run_id}"[:120].rstrip(".-")
        options = config.options(env=dict(project.env), workdir=project.workdir,
                                 binds=(BindMount(project.root, project.workdir, copy_on_write=True),))
        record = create_sandbox(self.store, name, image, entry.profile, options)
        self.result.sandbox = name
        assert self.result.log is not None
        return spawn(self.store, record, self.result.log, self.command)

    def finish(self, status: int, stopped: bool) -> None:
        result = self.result
        if result.status == "running":
            result.exit_code = exit_status(status)
            result.status = "passed" if result.exit_code == 0 else ("cancelled" if stopped else "failed")
            if result.status == "failed":
                result.reason = _reason(result)
        keep = self.keep_failed and result.status == "failed"
        if result.sandbox is None or keep:
            return
        try:
            live.remove(self.store, self.store.sandbox(result.sandbox), force=True)
        except SandboxError as exc:
            warn(f"cannot remove {result.sandbox}: {exc.message}")
        result.sandbox = None


def run(store: Store, project: Project, selected: list[Entry], command: tuple[str, ...], jobs: int,
        fail_fast: bool, keep_failed: bool, logs: Path, view: View) -> list[Result]:
    """Run ``command`` for every entry; the images must be built already."""
    logs.mkdir(parents=True, exist_ok=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    work = [ProjectJob(store, project, entry, Result(entry.name, entry.profile.name, log=logs / f"{entry.name}.log"),
                       run_id, command, keep_failed) for entry in selected]
    run_jobs(work, jobs, fail_fast, view)
    return [job.result for job in work]


def _reason(result: Result) -> str:
    """The last line the failed command printed, as the summary's one-line reason."""
    # The log's tail only: the command is the project's, and its output as long as it likes.
    lines = [line for line in tail(result.log, 20).splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# --- reports ------------------------------------------------------------------------------


def junit(results: list[Result], project: Project, command: tuple[str, ...]) -> str:
    """JUnit XML, one testcase per profile; a failure's type is ``exit-status``."""
    return runner_junit(results, f"sandboxmgr matrix: {project.slug}", f"matrix.{project.slug}",
                        lambda result: f"command: {' '.join(command)}\nlog: {result.log}\n")


def as_json(results: list[Result]) -> str:
    return json.dumps([r.to_json() for r in results], indent=2)
