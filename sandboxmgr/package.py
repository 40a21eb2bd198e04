"""``sandboxmgr package build``: build a package from source in a clean sandbox of each profile.

For each profile, as sbuild does it:

1. **build-deps** - a setup layer over the profile's image installs what the source's
   build-dependency fields name (pkgsource.build_deps_step); the layer is keyed by those
   fields, so a second build of the same source installs nothing;
2. a fresh sandbox over that layer, **without a network** (``--network host`` gives it one),
   the source shown read-only at ``/src``; root copies it to ``/build`` for the unprivileged
   build user, who unpacks a ``.dsc`` there (nothing of the source runs as root);
3. **build** - ``dpkg-buildpackage -us -uc`` as that user (``tests`` when it was the
   package's own test suite that failed), with ``parallel=N`` in ``DEB_BUILD_OPTIONS``: the
   CPUs this build may use (:func:`build_jobs`), as sbuild users set it and mock's
   ``%_smp_mflags`` does;
4. **results** - the products are copied out of the sandbox's own files into
   ``--results DIR/PROFILE/``, with the build log and ``build-info.json`` (the image, the
   toolchain's versions).

The sandbox's files are the build's, so hostile: only regular files whose names are
products are read, each opened without following a symlink, and copied (never moved or
linked) into a directory the host made.

An RPM source (a .src.rpm, a .spec) takes the same frame with its family's layer, steps,
collection and toolchain (rpmpackage.py, dispatched by :func:`_family`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from sandboxmgr import live
from sandboxmgr.errors import BuildError, SandboxError
from sandboxmgr.linux import copy_holes_kept
from sandboxmgr.mounts import BindMount
from sandboxmgr.pkgsource import BUILD_USER, Source, build_deps_step, unsatisfiable
from sandboxmgr.profile import Profile
from sandboxmgr.runner import TimedOut, View, fork_job, read_report, run_jobs, run_step, tail
from sandboxmgr.store import ImageRecord, SandboxRecord, Store

# What dpkg-buildpackage leaves beside the tree (dpkg-genchanges' files).
PRODUCT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.~_-]*\."
                        r"(deb|udeb|ddeb|changes|buildinfo|dsc|tar\.[a-z0-9]+|diff\.gz)\Z")
BUILD_TYPES = {"binary": "-b", "any": "-B", "all": "-A", "source": "-S", "full": ""}
STAGES = ("source", "build-deps", "build", "tests", "results", "timeout")
SOURCE_TREE = "source-tree.tar.gz"  # the unpacked source, for package test's autopkgtest tests
TOOLCHAIN = ("dpkg-dev", "gcc", "binutils", "libc6-dev", "make", "debhelper")


@dataclass
class PackageResult:
    name: str  # the profile, as given
    profile: str
    status: str = "pending"  # pending, running, passed, failed, cancelled
    stage: str | None = None  # the stage that failed (STAGES, pkgtest.STAGES)
    reason: str = ""
    packages: list[str] = field(default_factory=list)  # what apt could not install (build-deps, install)
    results: str | None = None
    log: str | None = None
    duration: float | None = None
    sandbox: str | None = None  # kept with --keep-failed
    leftovers: list[str] = field(default_factory=list)  # package test: files no package owns after the purge
    started: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "status": self.status, "stage": self.stage,
                "reason": self.reason, "packages": self.packages, "results": self.results, "log": self.log,
                "duration": None if self.duration is None else round(self.duration, 2), "sandbox": self.sandbox,
                "leftovers": self.leftovers}

    @property
    def shown(self) -> str:
        return f"at {self.stage}" if self.stage else ""

    @property
    def failure(self) -> tuple[str, str]:
        return self.stage or "error", self.reason

    @property
    def log_path(self) -> Path | None:
        return Path(self.log) if self.log else None

    def finished(self, report: dict[str, Any] | None, code: int, stopped: bool) -> None:
        """The outcome its worker reported (runner.fork_job), or why there is none."""
        if report is None:
            self.status = "cancelled" if stopped else "failed"
            if not stopped:
                self.reason = f"its worker ended with status {code} before reporting (see the messages above)"
            return
        for key in ("stage", "reason", "packages", "leftovers", "sandbox"):
            setattr(self, key, report[key])
        self.status = "failed" if self.stage else "passed"


@dataclass(frozen=True)
class BuildRequest:
    source: Source
    results: Path
    build_type: str = "binary"
    network: str = "none"
    keep_failed: bool = False
    timeout: float | None = None  # seconds the build step may take
    build_jobs: int | None = None  # --build-jobs: the N of parallel=N (0: none); None: the CPUs shared out
    deb_build_options: str | None = None  # the caller's DEB_BUILD_OPTIONS, passed on as sbuild does
    jobs: int = 0  # what one profile's build is given: build_jobs(), set by build_all


def build_jobs(request: BuildRequest, profile: Profile, at_once: int) -> int:
    """How many jobs one build runs (``parallel=N``): ``--build-jobs``, else the CPUs this process
    may run on (its affinity, as nproc counts them) shared among the ``at_once`` builds running
    together (-j), and no more than the profile's ``limits.cpus`` (rounded up: jobs that fill
    the quota). 0: none given (the build tool's own default)."""
    if request.build_jobs is not None:
        return request.build_jobs
    share = max(1, len(os.sched_getaffinity(0)) // max(1, at_once))
    cpus = profile.limits.cpus
    return share if cpus is None else max(1, min(share, math.ceil(cpus)))


def deb_build_options(given: str, jobs: int, forced: bool) -> str:
    """``given`` (DEB_BUILD_OPTIONS' words) with ``parallel=jobs``: added unless it says parallel=
    already; ``forced`` (--build-jobs) replaces its parallel=. 0 jobs adds nothing."""
    words = given.split()
    if jobs == 0 or (not forced and any(word.startswith("parallel=") for word in words)):
        return " ".join(words)
    return " ".join([*(word for word in words if not word.startswith("parallel=")), f"parallel={jobs}"])


def with_build_deps(profile: Profile, source: Source) -> Profile:
    """``profile`` with the layer that installs ``source``'s build dependencies on top, under a
    name of its own (the profile's own current image stays what it is)."""
    if source.family == "rpm":
        from sandboxmgr.rpmpackage import with_build_requires

        return with_build_requires(profile, source)
    return replace(profile, name=f"package-{source.name}.{profile.name}"[:128], setup=(*profile.setup,
                   build_deps_step(source)), aliases=())


def build_all(store: Store, request: BuildRequest, profiles: list[tuple[str, Profile]],
              image_for: Callable[[Profile], ImageRecord], parallel: int, fail_fast: bool,
              view: View) -> list[PackageResult]:
    """Build for each (name, profile): the build-deps layers first, one after another (each
    with its progress), then the builds, ``parallel`` at once (runner.run_jobs); ``view``
    is the live view of them all."""
    family = request.source.family
    for name, profile in profiles:  # all of them before anything is built
        if profile.family != family:
            raise SandboxError(f"{name} is a {profile.family} profile and {request.source.path} a {family} source",
                               hint=f"give -p profiles of the {family} family")
    if family == "rpm":
        from sandboxmgr.rpmpackage import check_request

        check_request(request)
    results = [PackageResult(name, profile.name) for name, profile in profiles]
    work = []
    at_once = min(parallel, len(profiles))
    for (_, profile), result in zip(profiles, results, strict=True):
        if fail_fast and any(r.status == "failed" for r in results):
            result.status = "cancelled"
            continue
        started = time.monotonic()
        image = _build_deps(request, profile, image_for, result)
        if image is None:
            result.duration, result.status = time.monotonic() - started, "failed"
            continue
        report = _results_dir(request, profile) / ".outcome.json"
        jobs = build_jobs(request, profile, at_once)
        work.append(PackageJob(result, report, partial(build_one, store, replace(request, jobs=jobs), profile,
                                                       image, result)))
    if fail_fast and any(r.status == "failed" for r in results):
        for job in work:  # their build-deps were ready before another's failed
            job.result.status = "cancelled"
        work = []
    run_jobs(work, parallel, fail_fast, lambda _rows: view(results))
    return results


def _build_deps(request: BuildRequest, profile: Profile, image_for: Callable[[Profile], ImageRecord],
                result: PackageResult) -> ImageRecord | None:
    """The image with ``request``'s build dependencies (stage build-deps), or None if they fail."""
    out = _results_dir(request, profile)
    result.results, result.log = str(out), str(out / "build.log")
    try:
        return image_for(with_build_deps(profile, request.source))
    except BuildError as failure:
        _failed(result, "build-deps", failure.message)
        text = tail(Path(failure.log), 400) if failure.log else failure.message
        result.packages = unsatisfiable(text)
        (out / "build.log").write_text(text + "\n")
        return None


def _results_dir(request: BuildRequest, profile: Profile) -> Path:
    out = request.results / profile.name  # a checked name, whatever spelling -p used (an alias, a path)
    out.mkdir(parents=True, exist_ok=True)
    return out


class PackageJob:
    """One profile's work in a worker (runner.fork_job): ``work`` fills ``result``, which the
    worker reports to ``report``."""

    def __init__(self, result: PackageResult, report: Path, work: Callable[[], None]) -> None:
        self.result, self.report, self.work = result, report, work

    def start(self) -> int:
        def body() -> dict[str, Any]:
            self.work()
            return self.result.to_json()

        return fork_job(body, self.report)

    def finish(self, status: int, stopped: bool) -> None:
        from sandboxmgr.pid1 import exit_status

        self.result.finished(read_report(self.report), exit_status(status), stopped)


def build_one(store: Store, request: BuildRequest, profile: Profile, image: ImageRecord,
              result: PackageResult) -> None:
    """One profile's build over its build-deps ``image``, its outcome in ``result``."""
    from sandboxmgr import config
    from sandboxmgr.resolve import create_sandbox

    source = request.source
    out = Path(str(result.results))
    log = Path(str(result.log))
    deps = with_build_deps(profile, source)
    plain = re.sub(r"[^a-z0-9._-]+", "-", source.name.lower())  # an RPM's Name may be PyYAML or gtk+
    name = f"pkg-{plain}-{profile.name}-{secrets.token_hex(3)}"[:120].rstrip(".-")
    mount = source.path if source.path.is_dir() else source.path.parent
    env = _build_env(request, deps) if source.family == "debian" else {}
    options = config.options(network=request.network, binds=(BindMount(mount, "/src", readonly=True),), env=env)
    record = create_sandbox(store, name, image, deps, options)
    steps, collect, record_info = _family(source.family)
    keep = False
    try:
        keep = steps(store, request, record, log, result) and request.keep_failed
        if not result.stage:
            collect(record, out, result)
        if not result.stage:
            record_info(store, record, image, out, log)
            _record_jobs(out / "build-info.json", request.jobs, env.get("DEB_BUILD_OPTIONS"))
    finally:
        if keep:
            result.sandbox = record.name
        else:
            live.remove(store, record, force=True)


def _build_env(request: BuildRequest, profile: Profile) -> dict[str, str]:
    """The build's DEB_BUILD_OPTIONS: the caller's (else the profile's ``env``'s) with parallel=N."""
    given = request.deb_build_options
    if given is None:
        given = profile.env.get("DEB_BUILD_OPTIONS", "")
    value = deb_build_options(given, request.jobs, forced=request.build_jobs is not None)
    return {"DEB_BUILD_OPTIONS": value} if value or "DEB_BUILD_OPTIONS" in profile.env else {}


def _record_jobs(info: Path, jobs: int, options: str | None) -> None:
    """build-info.json also says how parallel the build was told to be: ``build_jobs`` (0: not told)
    and the ``DEB_BUILD_OPTIONS`` it had (null: none, or an RPM build)."""
    data = json.loads(info.read_text())
    data.update(build_jobs=jobs, deb_build_options=options)
    info.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _family(family: str) -> tuple[Callable[[Store, BuildRequest, SandboxRecord, Path, PackageResult], bool],
                                  Callable[[SandboxRecord, Path, PackageResult], None],
                                  Callable[[Store, SandboxRecord, ImageRecord, Path, Path], None]]:
    """How a source of ``family`` is built in its sandbox, its products collected, its toolchain recorded."""
    if family == "rpm":
        from sandboxmgr import rpmpackage

        return rpmpackage.steps, rpmpackage.collect, rpmpackage.record_info
    return _steps, _collect, _record_info


def _steps(store: Store, request: BuildRequest, record: SandboxRecord, log: Path, result: PackageResult) -> bool:
    """Unpack and build; whether a step failed (its stage and reason are in ``result``)."""
    source = request.source
    tree = f"/build/{source.tree_name}"
    # Root only copies the files (cp -r copies links as links) and gives them to the build user;
    # nothing of the source runs as root, not even its unpacking (dpkg-source -x runs as the
    # build user). The tree's name is made of a checked name and version.
    copy = tree if source.path.is_dir() else "/build/source"
    made = run_step(store, record, log, ("/bin/sh", "-c", f"mkdir -p /build && cp -r --preserve=mode,timestamps,"
                                         f"links /src/. {copy} && chown -R {BUILD_USER}: /build"), None, append=False)
    # One step as the build user (a sandbox's start less): unpack a .dsc; then, for the package's
    # own tests (debian/tests/control), keep its tree as the build user had it before the build:
    # `package test` takes it from the results (a failure to keep it fails nothing, as before).
    unpack = "" if source.path.is_dir() else 'dpkg-source -x "$1" "$2" || exit; '
    keep = (f"cd /build && if [ -f {tree}/debian/tests/control ]; then tar -czf {SOURCE_TREE} "
            f"{source.tree_name} || true; fi")
    if made != 0 or run_step(store, record, log, ("/bin/sh", "-c", unpack + keep, "sh",
                                                  f"{copy}/{source.path.name}", tree), BUILD_USER, append=True):
        _failed(result, "source", f"unpacking {source.path.name} failed: {tail(log, 1)}")
        return True
    option = BUILD_TYPES[request.build_type]
    build = f"cd {tree} && exec dpkg-buildpackage -us -uc {option}".rstrip()
    try:
        status = run_step(store, record, log, ("/bin/sh", "-c", build), BUILD_USER, append=True,
                          timeout=request.timeout)
    except TimedOut:
        _failed(result, "timeout", f"the build ran longer than {request.timeout:g} s and was killed")
        return True
    if status != 0:
        text = tail(log, 60)
        stage = "tests" if re.search(r"dh_auto_test: error|make(\[\d+\])?: \*\*\* \[[^\]]*(check|test)", text) \
            else "build"
        _failed(result, stage, f"dpkg-buildpackage exited with status {status}: {tail(log, 1)}")
        return True
    return False


def _collect(record: SandboxRecord, out: Path, result: PackageResult) -> None:
    """Copy the products from the sandbox's /build (its own files: hostile) into ``out``."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    found = []
    try:
        upper = os.open(record.upper, flags | os.O_DIRECTORY)
        try:
            build = os.open("build", flags | os.O_DIRECTORY, dir_fd=upper)
        finally:
            os.close(upper)
    except OSError:
        _failed(result, "results", "the build left no /build directory")
        return
    try:
        for entry in sorted(os.listdir(build)):
            if PRODUCT_RE.match(entry) and copy_out(build, entry, out / entry):
                found.append(entry)
    finally:
        os.close(build)
    changes = [name for name in found if name.endswith(".changes")]
    if not changes:
        _failed(result, "results", "the build made no .changes file")
        return
    try:
        listed = [line.split()[-1] for name in changes for line in _files_field(out / name)]
    except SandboxError as bad:  # the build wrote it: anything may be in it
        _failed(result, "results", f"the build's .changes cannot be read: {bad.message}")
        return
    lost = [name for name in listed if name not in found]
    if lost:
        _failed(result, "results", f"the .changes lists files that are missing or not regular files: "
                                   f"{', '.join(lost[:5])}")


def _files_field(changes: Path) -> list[str]:
    """The lines of a .changes file's ``Files`` field: ``md5 size section priority name``."""
    from sandboxmgr.pkgsource import paragraphs, read_control

    fields = (paragraphs(read_control(changes), str(changes)) or [{}])[0]  # bounded: the build's file
    return [line for line in fields.get("Files", "").splitlines() if len(line.split()) == 5]


def copy_out(directory: int, name: str, target: Path) -> bool:
    """``name`` of ``directory`` into ``target`` if it is a regular file; whether it was."""
    try:
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return False
    with os.fdopen(handle, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            return False
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # a product of an earlier build, or a link someone left there
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as copy:
            copy_holes_kept(source.fileno(), copy.fileno())  # a sparse file of the build's stays one
    return True


def _record_info(store: Store, record: SandboxRecord, image: ImageRecord, out: Path, log: Path) -> None:
    """build-info.json: the image built in, and the toolchain's versions in it."""
    query = ("dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *TOOLCHAIN)
    versions_log = out / ".toolchain"
    run_step(store, record, versions_log, query, None, append=False)
    pairs = [line.split(" ", 1) for line in tail(versions_log, 50).splitlines() if " " in line]
    versions = {name: version for name, version in pairs if name in TOOLCHAIN and version}  # installed ones
    versions_log.unlink(missing_ok=True)
    info = {"image": image.key, "profile": image.profile, "toolchain": versions, "log": log.name}
    (out / "build-info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _failed(result: PackageResult, stage: str, reason: str) -> None:
    result.stage, result.reason = stage, reason
