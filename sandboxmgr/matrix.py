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
import dataclasses
import fnmatch
import json
import os
import re
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandboxmgr.errors import ProfileError, SandboxError
from sandboxmgr.mounts import BindMount
from sandboxmgr.profile import NAME_RE, Profile, ProfileRegistry
from sandboxmgr.schema import Raw, check_keys, read, scalar, string_list, type_name, validate_env
from sandboxmgr.store import SandboxRecord, Store

PROJECT_FILE = "sandboxmgr.yaml"
PROJECT_KEYS = ("profiles", "command", "workdir", "env", "prepare", "inline")
SOURCE_DIR = "/src"


@dataclass(frozen=True)
class Project:
    path: Path | None  # the project file, if there is one
    root: Path  # the project directory, shown at workdir
    profiles: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    workdir: str = SOURCE_DIR
    env: dict[str, str] = field(default_factory=dict)
    # profile name, distro or family -> shell steps run once in the image (cached as layers)
    prepare: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inline: dict[str, Profile] = field(default_factory=dict)
    # The project file as it was parsed: what trust.py checks is what runs.
    raw: Raw | None = field(default=None, compare=False, repr=False)

    @property
    def slug(self) -> str:
        """The project's name as it appears in image and sandbox names."""
        slug = re.sub(r"[^a-z0-9.-]+", "-", self.root.name.lower()).strip("-.")
        return slug or "project"


def load_project(root: Path, registry: ProfileRegistry) -> Project:
    """The project file in ``root`` (sandboxmgr.yaml), validated like a profile:
    every problem named with its line, all at once."""
    if set(str(root)) & set(",:\\\n"):
        # The project is shown through overlayfs, whose options cannot carry these.
        raise SandboxError(f"the project directory {root} contains ',', ':' or '\\'",
                           hint="move or link the project to a path without them")
    path = root / PROJECT_FILE
    if not path.is_file():
        return Project(path=None, root=root)
    raw = read(path)
    data = raw.data
    check_keys(raw, data, (), PROJECT_KEYS)
    profiles = string_list(raw, data, ("profiles",)) or []
    command = _command(raw, data)
    workdir = scalar(raw, data, ("workdir",)) or SOURCE_DIR
    if not workdir.startswith("/"):
        raw.error(("workdir",), "must be an absolute path inside the sandbox, like /src")
    env = _env(raw, data.get("env"))
    prepare: dict[str, tuple[str, ...]] = {}
    if "prepare" in data:
        value = data["prepare"]
        if not isinstance(value, dict):
            raw.error(("prepare",), f"must map a profile name, distro or family to steps, not {type_name(value)}")
        else:
            for key in value:
                steps = string_list(raw, value, ("prepare", key))
                if steps is not None:
                    prepare[key] = tuple(steps)
    inline_raws: dict[str, Raw] = {}
    if "inline" in data:
        value = data["inline"]
        if not isinstance(value, dict):
            raw.error(("inline",), f"must map names to profiles, not {type_name(value)}")
        else:
            for name, body in value.items():
                if not NAME_RE.fullmatch(name):
                    raw.error(("inline", name), f"{name!r} is not a valid profile name")
                elif not isinstance(body, dict):
                    raw.error(("inline", name), f"must be a profile (a mapping), not {type_name(body)}")
                else:
                    inline_raws[name] = raw.part(("inline", name), body)
    if raw.errors:
        raise _problems(raw)
    inline = {name: registry.load_inline(name, part) for name, part in inline_raws.items()}
    return Project(path=path, root=root, profiles=tuple(profiles), command=command, workdir=workdir,
                   env=env, prepare=prepare, inline=inline, raw=raw)


def _problems(raw: Raw) -> ProfileError:
    count = len(raw.errors)
    return ProfileError(f"{count} problem{'s' if count > 1 else ''} in {raw.path}:\n  " + "\n  ".join(raw.errors),
                        hint="fix the keys named above; the README describes sandboxmgr.yaml")


def _command(raw: Raw, data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("command")
    if value is None:
        return ()
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    items = string_list(raw, data, ("command",))
    return tuple(items or ())


def _env(raw: Raw, value: Any) -> dict[str, str]:
    return {} if value is None else validate_env(raw, value)


# --- entries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str  # as the user wrote it (or the profile a glob matched)
    profile: Profile  # the profile plus the project's prepare steps, named after the project


def expand(patterns: Sequence[str], project: Project, registry: ProfileRegistry) -> list[str]:
    """Profile names from names, aliases, paths and globs (``ubuntu-*``), in order, once each."""
    names: list[str] = []
    for pattern in patterns:
        if pattern in project.inline:
            matched = [pattern]
        elif any(char in pattern for char in "*?["):
            candidates = sorted(set(registry.files()) | set(project.inline))
            matched = [name for name in candidates if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ProfileError(f"no profile matches {pattern!r}", hint="see 'sandboxmgr profiles'")
        else:
            matched = [pattern]
        for name in matched:
            if name not in names:
                names.append(name)
    return names


def entries(names: Sequence[str], project: Project, registry: ProfileRegistry) -> list[Entry]:
    result = []
    for name in names:
        base = project.inline[name] if name in project.inline else registry.load(name)
        steps = _prepare_steps(project, base)
        label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
        # Images are per profile name: the project's own name keeps its images apart.
        profile = dataclasses.replace(base, name=f"{project.slug}.{base.name}"[:128],
                                      setup=(*base.setup, *steps), aliases=())
        result.append(Entry(label, profile))
    return result


def _prepare_steps(project: Project, profile: Profile) -> tuple[str, ...]:
    for key in (profile.name, profile.distro, profile.family):
        if key in project.prepare:
            return project.prepare[key]
    return ()


# --- running ------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    profile: str
    status: str = "pending"  # pending, running, passed, failed, error, cancelled
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
    from sandboxmgr import images, sandbox

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
                entry, result = selected[index], results[index]
                image = images.ensure_image(store, entry.profile, lambda _m: None)
                name = f"matrix-{project.slug}-{entry.name}-{run_id}"[:120].rstrip(".-")
                result.sandbox = name
                options = sandbox.RunOptions(env=tuple(f"{k}={v}" for k, v in project.env.items()),
                                             workdir=project.workdir,
                                             binds=(BindMount(project.root, project.workdir, copy_on_write=True),))
                record = sandbox.create(store, name, image, entry.profile, options)
                assert result.log is not None
                pid = _spawn(store, record, result.log, command)
                running[pid] = index
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
            code = os.waitstatus_to_exitcode(status)
            result.exit_code = 128 - code if code < 0 else code
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
        for pid, index in running.items():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            _finish(store, results[index], keep=False)
        for result in results:
            if result.status == "pending" and result.sandbox is not None:
                with contextlib.suppress(SandboxError):
                    store.remove_sandbox(store.sandbox(result.sandbox))
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


def _spawn(store: Store, record: SandboxRecord, log: Path, command: tuple[str, ...]) -> int:
    """A worker process that runs one sandbox, its output in ``log``."""
    from sandboxmgr import sandbox
    from sandboxmgr.errors import EXIT_MANAGER

    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
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
            status = sandbox.run_in(store, record, sandbox.RunOptions(argv=command))
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
        store.remove_sandbox(store.sandbox(result.sandbox))
    except SandboxError as exc:
        print(f"sandboxmgr: warning: cannot remove {result.sandbox}: {exc.message}", file=sys.stderr)
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
