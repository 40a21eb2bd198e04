"""``package build --farm``: a Debian source built on the farm's workers, its results back.

The job carries the source as a tar (a tree, or a .dsc with the files its ``Files`` field
names) and package build's options; the worker builds it with package.py, exactly as a local
build, with ITS OWN profile of that name, in its own store; the results (farmresults.py) come
back into the caller's ``--results DIR/PROFILE/``, and the caller reports them as a local build
(the same stages, JSON, JUnit, exit status).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxmgr import farmjob, farmresults
from sandboxmgr.errors import SandboxError, shown
from sandboxmgr.farmcall import FarmJob, retried
from sandboxmgr.farmreap import Limits
from sandboxmgr.package import PackageResult

if TYPE_CHECKING:
    from sandboxmgr.pkgsource import Source
    from sandboxmgr.profile import Profile, ProfileRegistry
    from sandboxmgr.store import Store

FARM_STAGE = "farm"  # the worker refused the job or was stopped mid-job: not the build's doing


# --- the worker ----------------------------------------------------------------------------------


def run_package_job(store: Store, registry: ProfileRegistry, job: dict[str, Any], where: Path) -> dict[str, Any]:
    """One package build from a checked job message, with this worker's own profile of its name;
    its results in ``where/results/PROFILE/`` (``files_dir``, sent by the slot)."""
    from sandboxmgr import images, package
    from sandboxmgr.pkgsource import read_source

    name, build = job["profile"], job["build"]
    try:
        with farmjob.job_tree(store, registry, job) as root:
            source = read_source(root / build["path"])
            profile = registry.load(name)
            request = package.BuildRequest(source, where / "results", build["build_type"], build["network"], False,
                                           build["timeout"], build["build_jobs"], build["deb_build_options"])
            (result,) = package.build_all(store, request, [(name, profile)],
                                          lambda wanted: images.ensure_image(store, wanted, lambda _message: None),
                                          1, False, lambda _results: None)
    except SandboxError as exc:
        return _refused(exc.message)
    text = farmjob.log_tail(Path(str(result.log)) if result.log else None).decode(errors="replace")
    status = "failed" if result.stage else "passed"
    return {"status": status, "exit_code": 0 if status == "passed" else None, "reason": result.reason, "log": text,
            "package": {"stage": result.stage, "packages": result.packages[:256]}, "files_dir": result.results}


def _refused(reason: str) -> dict[str, Any]:
    return {"status": "failed", "exit_code": None, "reason": reason, "log": f"sandboxmgr farm: {reason}\n",
            "package": {"stage": FARM_STAGE, "packages": []}, "files_dir": None}


def reply_extra(client: Any, job_id: str, outcome: dict[str, Any], beat: Callable[[], None]) -> dict[str, Any]:
    """The slot's part: the build's files into the broker (``beat``: its heartbeat meanwhile);
    the reply's ``package`` and ``files``."""
    package = outcome.pop("package", None) or {"stage": FARM_STAGE, "packages": []}
    files_dir = outcome.pop("files_dir", None)
    files: list[dict[str, Any]] = []
    if files_dir:
        try:
            files = farmresults.send(client, job_id, Path(files_dir), beat)
        except farmjob.MessageError as exc:
            outcome.update(status="failed", exit_code=None, reason=exc.message)
            package = {"stage": "results", "packages": []}
    return {"package": package, "files": files}


# --- the caller ----------------------------------------------------------------------------------


class PackageFarmJob(FarmJob):
    """One profile's package build sent to the farm: the wait is a matrix job's, the results are
    received into ``dest`` and the report is a local build's."""

    def __init__(self, url: str, queue: str, message: bytes, job_id: str, result: PackageResult, dest: Path,
                 limits: Limits) -> None:
        super().__init__(url, queue, message, job_id, result, dest / ".outcome.json", limits)
        self.dest = dest

    def received(self, client: Any, data: dict[str, Any]) -> dict[str, Any]:
        """What a local build's report holds, the files written (in the waiter's process)."""
        stage = data.get("stage")  # the wait's: timeout, lost
        package = data.get("package") or {"stage": None, "packages": []}
        reason = data["reason"]
        if data["status"] == "failed" and stage is None:
            stage = package["stage"] or FARM_STAGE
        written: list[str] = []
        try:
            written = farmresults.receive(client, self.job_id, data.get("files", []), self.dest)
        except SandboxError as exc:  # a forged reply, most likely; or --results DIR/PROFILE cannot be written
            stage, reason = "results", exc.message
        if "build.log" not in written:  # an earlier build's is not this one's; a link there is not followed
            farmresults.write_log(self.dest, data["log"])
        if data["lost"] and stage != "lost":
            reason = retried(reason, data["lost"])
        return {"stage": stage, "reason": reason, "packages": package["packages"], "leftovers": [], "sandbox": None,
                "cancelled": data["status"] == "cancelled"}

    def finish(self, status: int, stopped: bool) -> None:
        from sandboxmgr.runner import read_report

        report = read_report(self.report)
        result: PackageResult = self.result
        result.finished(report, status, stopped)
        if report is not None and report["cancelled"]:
            result.status = "cancelled"


def pack_source(source: Source) -> tuple[bytes, str]:
    """The source as a farm job's tar, and its path in it: a tree whole (``.``), or a .dsc with the
    files its ``Files`` field names (beside it, as dpkg-source wants them)."""
    from sandboxmgr.pkgsource import paragraphs, read_control

    if source.family != "debian":
        raise SandboxError(f"{source.path}: a farm builds Debian sources only, not yet RPM ones",
                           hint="build it without --farm")
    if source.path.is_dir():
        return farmjob.pack(source.path), "."
    fields = (paragraphs(read_control(source.path), str(source.path)) or [{}])[0]
    names = [line.split()[-1] for line in fields.get("Files", "").splitlines() if len(line.split()) == 3]
    with tempfile.TemporaryDirectory(prefix="sandboxmgr-farm-") as tmp:
        directory = os.open(source.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            budget = farmjob.UNPACKED_CAP
            for name in [source.path.name, *names]:
                if "/" in name or "\0" in name or name.startswith("."):
                    raise SandboxError(f"{source.path}: its Files field names {shown(name[:100])}, not a file "
                                       "beside it", hint="give a .dsc whose files are beside it")
                budget -= _copy_beside(directory, name, Path(tmp) / name, budget, source.path)
        finally:
            os.close(directory)
        return farmjob.pack(Path(tmp)), source.path.name


def _copy_beside(directory: int, name: str, target: Path, budget: int, dsc: Path) -> int:
    """``name`` of ``directory`` (beside ``dsc``) into ``target`` when it is a regular file itself,
    never a link's target (a downloaded source's link to /etc/shadow was read by root and sent to
    the broker; one to /dev/zero was read until the disk was full: a local build copies a link as a
    link, into its sandbox); its size, refused over ``budget``."""
    from sandboxmgr.linux import kernel_file

    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError as exc:
        raise SandboxError(f"cannot read {shown(name[:100])} beside {dsc}: {exc.strerror}",
                           hint="a .dsc's files must be beside it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or kernel_file(fd):
            raise SandboxError(f"{dsc}: {shown(name[:100])} beside it is a link or not a regular file, which a farm "
                               "does not send", hint="put the file itself beside the .dsc")
        size = 0
        with open(f"/proc/self/fd/{fd}", "rb") as file, open(target, "wb") as copy:
            while chunk := file.read(farmresults.CHUNK):
                size += len(chunk)
                if size > budget:
                    raise SandboxError(f"{dsc}: its files hold more than {farmjob.UNPACKED_CAP} bytes",
                                       hint="build it without --farm")
                copy.write(chunk)
        return size
    finally:
        os.close(fd)


def submit(url: str, queue: str, source: Source, results: Path, profiles: list[tuple[str, Profile]],
           build: dict[str, Any], jobs: int, fail_fast: bool, view: Callable[[list[Any]], None],
           limits: Limits) -> list[PackageResult]:
    """Build ``source`` for every (name, profile) on the farm; the results, as package.build_all's."""
    from sandboxmgr.farm import connect
    from sandboxmgr.runner import run_jobs

    for name, profile in profiles:
        if profile.family != source.family:
            raise SandboxError(f"{name} is a {profile.family} profile and {source.path} a {source.family} source",
                               hint=f"give -p profiles of the {source.family} family")
    connect(url)
    tar, path = pack_source(source)
    work = []
    for name, profile in profiles:
        dest = results / profile.name
        dest.mkdir(parents=True, exist_ok=True)
        result = PackageResult(name, profile.name, results=str(dest), log=str(dest / "build.log"))
        job_id = os.urandom(16).hex()
        message = farmjob.make_package_job(job_id, profile.name, {**build, "path": path}, tar)
        work.append(PackageFarmJob(url, queue, message, job_id, result, dest, limits))
    run_jobs(work, jobs, fail_fast, lambda _rows: view([job.result for job in work]))
    return [job.result for job in work]
