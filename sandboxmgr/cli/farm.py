"""The farm's verbs: ``farm worker``, and the --farm half of ``matrix``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sandboxmgr.cli.app import App, pass_app, require_root
from sandboxmgr.errors import SandboxError

if TYPE_CHECKING:
    from sandboxmgr.farmreap import Limits
    from sandboxmgr.matrix import Result
    from sandboxmgr.package import PackageResult
    from sandboxmgr.pkgsource import Source
    from sandboxmgr.profile import Profile
    from sandboxmgr.project import Entry, Project

QUEUE_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class Seconds(click.FloatRange):
    """A number of seconds above 0: click's FloatRange takes 'nan', which no deadline check (elapsed >
    nan) ever passes - a wait without its bound."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{str(value).strip()[:40]!r} is not a number of seconds", param, ctx)
        return number


SECONDS = Seconds(min=0, min_open=True)


def check_queue(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    import re

    if not re.fullmatch(QUEUE_RE, value):
        raise click.BadParameter("a queue is a name of letters, digits, '.', '_' and '-' (at most 64)")
    return value


queue_option = click.option("--queue", default="default", show_default=True, callback=check_queue,
                            help="The broker's queue: workers of one kind of machine share one.")


@click.group()
def farm() -> None:
    """Run matrix jobs and package builds on many machines: workers take them from a Redis broker.

    Whoever can reach the broker can run builds on the workers (as root, in sandboxes):
    give it a password (redis://:PASSWORD@HOST:PORT/0) and keep it on loopback or behind TLS
    (rediss://). See the README's Farm section.
    """


@farm.command()
@click.option("--broker", required=True, envvar="SANDBOXMGR_FARM", metavar="URL",
              help="redis://:PASSWORD@HOST:PORT/N (or rediss:// for TLS); also SANDBOXMGR_FARM.")
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many jobs this worker runs at once.")
@queue_option
@click.option("--keep-logs", type=click.IntRange(min=0), default=100, show_default=True, metavar="N",
              help="How many finished jobs' directories (their logs) stay in STORE/logs/farm/.")
@pass_app
def worker(app: App, broker: str, concurrency: int, queue: str, keep_logs: int) -> int:
    """Take jobs (matrix entries, package builds) from the broker until SIGTERM or Ctrl-C, and run
    each in this worker's store, with this worker's own profile of the name the job gives (images
    built or reused here)."""
    from sandboxmgr import farm as farm_

    require_root(app, "farm worker")
    store, registry = app.store, app.registry
    store.ensure()  # logs/ 0700 before the worker's reports go there

    def say(line: str) -> None:
        if not app.quiet:
            click.echo(line, err=True)

    def run(job: dict[str, Any], logs: Path) -> dict[str, Any]:
        if job["kind"] == "package":
            from sandboxmgr.farmpackage import run_package_job

            return run_package_job(store, registry, job, logs)
        return farm_.run_matrix_job(store, registry, job, logs)

    return farm_.serve(broker, queue, concurrency, run, say, store.logs_dir / "farm", keep_logs)


def farm_options(verb: Callable[..., Any]) -> Callable[..., Any]:
    """matrix's --farm bounds: how long a job may wait, run, and be lost."""
    for option in reversed((
        click.option("--farm-timeout", type=SECONDS, default=3600, metavar="SECONDS",
                     show_default=True, help="With --farm: fail a job no worker took in this long (stage: timeout)."),
        click.option("--farm-job-timeout", type=SECONDS, default=3600,
                     metavar="SECONDS", show_default=True,
                     help="With --farm: stop a job its worker has run this long (stage: timeout)."),
        click.option("--farm-retries", type=click.IntRange(min=0, max=100), default=1, metavar="N", show_default=True,
                     help="With --farm: run a job whose worker died again, at most N times (then stage: lost)."),
    )):
        verb = option(verb)
    return verb


FARM_ONLY = ("queue", "farm_timeout", "farm_job_timeout", "farm_retries")


def refuse_farm_options_alone() -> None:
    """``--queue`` or a ``--farm-*`` bound given without ``--farm`` (or SANDBOXMGR_FARM): a user
    who typed one meant the farm, and the run would otherwise be local without a word."""
    context = click.get_current_context()
    for name in FARM_ONLY:
        if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            option = "--" + name.replace("_", "-")
            raise SandboxError(f"{option} is for a run on the farm, and no --farm URL is given",
                               hint="give --farm redis://:PASSWORD@HOST:PORT/N (or set SANDBOXMGR_FARM), "
                                    f"or leave {option} out")


def run_matrix(url: str, queue: str, project: Project, selected: list[Entry], command: tuple[str, ...],
               jobs: int, fail_fast: bool, logs: Path, view: Any, limits: Limits) -> list[Result]:
    """``matrix --farm``: the entries to the farm's workers, each by its profile's name."""
    from sandboxmgr import farmcall

    if project.prepare or project.inline:
        raise SandboxError("the project's file has 'prepare:' or 'inline:' profiles, which a farm does not run yet",
                           hint="run this matrix without --farm, or move the steps into the workers' profiles")
    prefix = f"{project.slug}."
    entries = [(entry.name, entry.profile.name.removeprefix(prefix)) for entry in selected]
    return farmcall.submit(url, queue, entries, project.root, command, dict(project.env), project.workdir, logs,
                           jobs, fail_fast, view, limits)


def run_package(url: str, queue: str, source: Source, results: Path, profiles: list[tuple[str, Profile]],
                build_type: str, network: str, timeout: float | None, build_jobs: int | None, keep_failed: bool,
                jobs: int, fail_fast: bool, view: Any, limits: Limits) -> list[PackageResult]:
    """``package build --farm``: the source to the farm's workers, each by its profile's name."""
    import os

    from sandboxmgr import farmpackage

    if keep_failed:
        raise SandboxError("--keep-failed keeps a sandbox on a farm's worker, which 'package build --farm' does not do",
                           hint="run without --keep-failed; the log and results of each build come back")
    build = {"build_type": build_type, "network": network, "timeout": timeout, "build_jobs": build_jobs,
             "deb_build_options": os.environ.get("DEB_BUILD_OPTIONS")}
    return farmpackage.submit(url, queue, source, results, profiles, build, jobs, fail_fast, view, limits)
