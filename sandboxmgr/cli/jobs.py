"""Verbs of jobs: matrix (a project across profiles), trust, doctor, package build and test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sandboxmgr import ui
from sandboxmgr.cli import farm as farm_cli
from sandboxmgr.cli.app import COMMAND_SETTINGS, App, CommandVerb, complete_profiles, pass_app, require_root
from sandboxmgr.errors import SandboxError, counted
from sandboxmgr.locations import default_store
from sandboxmgr.ui import MatrixView, print_json

if TYPE_CHECKING:
    from sandboxmgr.package import PackageResult
    from sandboxmgr.profile import Profile


# --- doctor ------------------------------------------------------------------------------------


@click.command()
@click.option("--fix", is_flag=True, help="Clean up what is found (never deleting through a mount).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--apparmor-profile", is_flag=True,
              help="Print the AppArmor profile that lets this installation make user namespaces where AppArmor "
                   "restricts them (Ubuntu 24.04 and later), and do nothing else.")
@pass_app
def doctor(app: App, fix: bool, as_json: bool, apparmor_profile: bool) -> int:
    """Find what a crash left: mounts, temporary directories, locks, cgroups, processes.

    Exits 0 when nothing is left (or --fix cleaned it all), 1 when something is.
    Cgroups and processes are checked machine-wide, the rest in the store.
    For an ordinary user it reports first what keeps it from rootless mode.

    Root inside root's sandboxes is root outside unless they run with --userns auto
    (run, create; the profile key userns: auto): see the README's security model.
    """
    from sandboxmgr import doctor as doctor_

    if apparmor_profile:
        click.echo(doctor_.apparmor_profile(), nl=False)
        return 0
    findings = doctor_.rootless_findings() if os.geteuid() != 0 else []
    if findings:  # an ordinary user whose store is out of reach until they are fixed
        if as_json:
            print_json([f.to_json() for f in findings])
        else:
            ui.findings_table(findings, app.store_path or default_store())
        return 1
    findings = doctor_.examine(app.store)
    if fix:
        doctor_.repair(app.store, findings)
    left = [f for f in findings if not f.fixed]
    if as_json:
        print_json([f.to_json() for f in findings])
        return 1 if left else 0
    ui.findings_table(findings, app.store.root)
    fixable = [f for f in left if f.kind != "binfmt"]  # the host's handlers: each finding names its fix
    if fixable and not fix:
        click.echo(f"hint: 'sandboxmgr doctor --fix' cleans up these {counted(len(fixable), 'leftover')} "
                   "(it unmounts, never deletes through a mount)", err=True)
    return 1 if left else 0


# --- matrix -----------------------------------------------------------------------------------


@click.command(cls=CommandVerb, context_settings=COMMAND_SETTINGS)
@click.option("-p", "--profile", "patterns", multiple=True, metavar="PROFILE",
              help="A profile, alias, path or glob (ubuntu-*); repeatable. Default: the project file's list.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), show_default="CPUs; with --farm, every profile",
              help="How many profiles run at once.")
@click.option("-C", "--project", "project_dir", type=click.Path(file_okay=False, exists=True), default=".",
              help="The project directory (with its sandboxmgr.yaml); shown at /src, copy-on-write.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failure; the rest are cancelled.")
@click.option("--keep-failed", is_flag=True, help="Keep each failed profile's sandbox to step into it.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.option("--trust", "trust_files", is_flag=True,
              help="Trust the project's files for this run: let them set host mounts, bootstrap arguments, "
                   "keys and local repositories (see 'sandboxmgr trust').")
@click.option("--farm", "farm_url", metavar="URL", envvar="SANDBOXMGR_FARM",
              help="Run the jobs on the farm's workers (redis://:PASSWORD@HOST:PORT/N): see 'sandboxmgr farm'.")
@farm_cli.queue_option
@farm_cli.farm_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def matrix(app: App, patterns: tuple[str, ...], jobs: int | None, project_dir: str, fail_fast: bool, keep_failed: bool,
           junit_path: str | None, as_json: bool, trust_files: bool, farm_url: str | None, queue: str,
           farm_timeout: float, farm_job_timeout: float, farm_retries: int, command: tuple[str, ...]) -> int:
    """Run COMMAND (or the project file's) for a project in a fresh sandbox of each profile.

    Exit status 0 only if it passed in every profile, 1 if it failed in any.
    """
    import time

    from sandboxmgr import matrix as matrix_
    from sandboxmgr import project as project_file

    require_root(app, "matrix")
    if not farm_url:
        farm_cli.refuse_farm_options_alone()
    if command[:1] == ("--",):
        command = command[1:]
    project, selected, command = project_file.prepare(app.store, app.registry, Path(project_dir).resolve(), patterns,
                                                 command, trust_files)
    logs = app.store.logs_dir / "matrix" / f"{project.slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    if farm_url:
        if keep_failed:
            raise SandboxError("--keep-failed keeps a sandbox on a farm's worker, which 'matrix --farm' does not do",
                               hint="run without --keep-failed; the log of each job comes back")
        app.store.ensure()  # logs/ 0700, as a local run's image step leaves it
        from sandboxmgr.farmreap import Limits

        limits = Limits(farm_timeout, farm_job_timeout, farm_retries)
        results = farm_cli.run_matrix(farm_url, queue, project, selected, command, jobs or len(selected), fail_fast,
                                      logs, MatrixView(app.quiet), limits)
    else:
        project_file.build_images(selected, app.image_for)
        results = matrix_.run(app.store, project, selected, command, jobs or os.cpu_count() or 1, fail_fast,
                              keep_failed, logs, MatrixView(app.quiet))
    if junit_path:
        Path(junit_path).write_text(matrix_.junit(results, project, command))
    if as_json:
        click.echo(matrix_.as_json(results))
    else:
        ui.results_table(results)
    if any(r.status == "cancelled" for r in results) and not fail_fast:
        return 130
    return 0 if all(r.status == "passed" for r in results) else 1


@click.command(name="trust")
@click.argument("project_dir", type=click.Path(file_okay=False, exists=True), default=".", required=False)
@click.option("--revoke", is_flag=True, help="No longer trust the project's files.")
@pass_app
def trust_(app: App, project_dir: str, revoke: bool) -> None:
    """Trust PROJECT_DIR's sandboxmgr.yaml (and the profile files it names) as they are now.

    A trusted project file may set what makes the host read, run or trust something it
    chose: host mounts, bootstrap.extra_args and keyring, file:// mirrors and repositories,
    repository keys, gpgcheck: false. The sha256 of each file is recorded in the store;
    any edit to a file revokes its trust.
    """
    from sandboxmgr import project as project_file
    from sandboxmgr import trust

    require_root(app, "trust")
    project = project_file.load_project(Path(project_dir).resolve(), app.registry)
    if project.path is None:
        raise SandboxError(f"no {project_file.PROJECT_FILE} in {project.root}", hint="give the project's directory")
    names = project_file.expand(project.profiles, project, app.registry)
    listed = [name for name in names if name not in project.inline]
    others = [entry.profile for entry in project_file.entries(listed, project, app.registry)]
    found, digests = trust.findings(project.raw, project.inline, others, app.registry)
    trust.record(app.store, digests, revoke=revoke)
    if app.quiet:
        return
    for path, sha256 in digests.items():
        click.echo(f"{'no longer trusted' if revoke else 'trusted'}: {path} (sha256 {sha256[:16]})")
    if not revoke:
        for finding in found:
            click.echo(f"  may now set {finding.key} ({finding.path.name}:{finding.line})")
        click.echo("an edit to any of these files revokes its trust")


# --- package -----------------------------------------------------------------------------------


@click.group()
def package() -> None:
    """Build packages from source, and test them, in clean sandboxes."""


def job_options(verb: Callable[..., Any]) -> Callable[..., Any]:
    """The options package build and test share with matrix: -j, --fail-fast, --keep-failed,
    --timeout, --junit, --json."""
    for option in reversed((
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="CPUs",
                     help="How many profiles run at once."),
        click.option("--fail-fast", is_flag=True, help="Stop at the first failure; the rest are cancelled."),
        click.option("--keep-failed", is_flag=True, help="Keep each failed profile's sandbox to step into it."),
        click.option("--timeout", type=farm_cli.SECONDS, metavar="SECONDS",
                     help="Kill a step that runs longer (stage: timeout)."),
        click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write JUnit XML here (a failure's type is its stage)."),
        click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table."),
    )):
        verb = option(verb)
    return verb


def _report(results: list[PackageResult], stopped: bool, fail_fast: bool, junit_path: Path | None,
            as_json: bool, suite: str) -> int:
    """The table or JSON, the JUnit file; the exit status (0, 1, or 130 when interrupted)."""
    from sandboxmgr.runner import junit

    if junit_path:
        junit_path.write_text(junit(results, f"sandboxmgr {suite}", suite.replace(" ", "."),
                                    lambda r: f"results: {r.results}\nlog: {r.log}\n", cause="stage"))
    if as_json:
        print_json([r.to_json() for r in results])
    else:
        ui.package_table(results)
    if stopped and not fail_fast:
        return 130
    return 0 if all(r.status == "passed" for r in results) else 1


def _profiles(app: App, names: tuple[str, ...]) -> list[tuple[str, Profile]]:
    """One entry per profile, however many spellings name it (an alias, a path)."""
    return list({profile.name: (name, profile) for name in names for profile in [app.registry.load(name)]}.values())


@package.command(name="build")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-p", "--profile", "profiles", multiple=True, required=True, shell_complete=complete_profiles,
              help="A profile to build in (repeat for several); of the source's family.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Where the products go, one directory per profile.")
@click.option("--build-type", type=click.Choice(["binary", "any", "all", "source", "full"]), default="binary",
              show_default=True,
              help="dpkg-buildpackage's -b, -B, -A, -S, or everything (rpmbuild: -bs for source, else -ba).")
@click.option("--network", type=click.Choice(["none", "host"]), default="none", show_default=True,
              help="The build's network once its dependencies are installed (none: as sbuild and mock).")
@click.option("--build-jobs", type=click.IntRange(min=0), metavar="N",
              help="Jobs in one build: DEB_BUILD_OPTIONS parallel=N, rpm's -jN [default: the CPUs shared among "
                   "the builds at once; 0: none given].")
@job_options
@click.option("--farm", "farm_url", metavar="URL", envvar="SANDBOXMGR_FARM",
              help="Build on the farm's workers, each with its own profile of the name (see 'sandboxmgr farm').")
@farm_cli.queue_option
@farm_cli.farm_options
@pass_app
def package_build(app: App, source: Path, profiles: tuple[str, ...], results_dir: Path, build_type: str,
                  network: str, build_jobs: int | None, jobs: int, fail_fast: bool, keep_failed: bool,
                  timeout: float | None, junit_path: Path | None, as_json: bool, farm_url: str | None, queue: str,
                  farm_timeout: float, farm_job_timeout: float, farm_retries: int) -> int:
    """Build SOURCE in a fresh sandbox of each profile: a Debian source tree or a .dsc, or a
    .src.rpm, a .spec with its sources beside it, or a directory holding one .spec.

    Exit status 0 if every build made its packages, 1 if any failed (the JSON's `stage` says
    where: source, build-deps, build, tests, results, timeout), 130 when interrupted.
    """
    from sandboxmgr import package as package_
    from sandboxmgr.pkgsource import read_source

    require_root(app, "package build")
    if not farm_url:
        farm_cli.refuse_farm_options_alone()
    if farm_url:
        from sandboxmgr.farmreap import Limits

        results = farm_cli.run_package(farm_url, queue, read_source(source), results_dir.resolve(),
                                       _profiles(app, profiles), build_type, network, timeout, build_jobs,
                                       keep_failed, jobs, fail_fast, MatrixView(app.quiet),
                                       Limits(farm_timeout, farm_job_timeout, farm_retries))
        return _report(results, any(r.status == "cancelled" for r in results), fail_fast, junit_path, as_json,
                       "package build")
    request = package_.BuildRequest(read_source(source), results_dir.resolve(), build_type, network, keep_failed,
                                    timeout, build_jobs, os.environ.get("DEB_BUILD_OPTIONS"))
    view = MatrixView(app.quiet)
    results = package_.build_all(app.store, request, _profiles(app, profiles), app.image_for, jobs, fail_fast, view)
    stopped = any(r.status == "cancelled" for r in results)
    return _report(results, stopped, fail_fast, junit_path, as_json, "package build")


@package.command(name="test")
@click.argument("packages", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-p", "--profile", "profiles", multiple=True, required=True, shell_complete=complete_profiles,
              help="A profile to test in (repeat for several).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Test the .deb or .rpm files of package build's results (DIR/PROFILE/, or one profile's "
                   "directory).")
@click.option("--check", "checks", multiple=True, metavar="CMD",
              help="A shell command that must succeed once the packages are installed (as root); repeatable.")
@job_options
@pass_app
def package_test(app: App, packages: tuple[Path, ...], profiles: tuple[str, ...], results_dir: Path | None,
                 checks: tuple[str, ...], jobs: int, fail_fast: bool, keep_failed: bool, timeout: float | None,
                 junit_path: Path | None, as_json: bool) -> int:
    """Install PACKAGES (.deb or .rpm files, of the profiles' family) in a fresh sandbox of each
    profile, run the checks, remove and purge them, and report the files left behind.

    apt-get install ./x.deb or dnf install ./x.rpm, with dependencies from the profile's
    archive. The checks: each --check CMD, and a Debian package's autopkgtest tests
    (debian/tests/control) when its source is known (package build's results). Exit status 0
    if every profile passed, 1 if any failed (the JSON's `stage` says where: install, tests,
    remove, purge, leftovers, timeout), 130 when interrupted.
    """
    import time

    from sandboxmgr import pkgtest

    require_root(app, "package test")
    for path in packages:
        if path.name.endswith(".src.rpm") or path.suffix not in (".deb", ".rpm"):
            raise SandboxError(f"{path}: " + ("a source package: build it first" if path.name.endswith(".src.rpm")
                                              else "not a .deb or .rpm file"),
                               hint="give .deb or .rpm files, or --results DIR of package build")
    if not packages and results_dir is None:
        raise SandboxError("no packages to test", hint="give .deb or .rpm files, or --results DIR of package build")
    loaded = [(name, profile, pkgtest.packages_for(name, profile, list(packages), results_dir))
              for name, profile in _profiles(app, profiles)]
    logs = app.store.logs_dir / "package-test" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    request = pkgtest.TestRequest(checks, logs, keep_failed, timeout)
    results = pkgtest.run_all(app.store, request, loaded, app.image_for, jobs, fail_fast, MatrixView(app.quiet))
    stopped = any(r.status == "cancelled" for r in results)
    return _report(results, stopped, fail_fast, junit_path, as_json, "package test")
