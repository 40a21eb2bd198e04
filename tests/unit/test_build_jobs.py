"""How parallel one `package build` is told to be: parallel=N in DEB_BUILD_OPTIONS, rpm's -jN."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxmgr.limits import Limits
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.package import BuildRequest, build_jobs, deb_build_options
from sandboxmgr.pkgsource import Source
from sandboxmgr.profile import Profile, ProfileRegistry
from sandboxmgr.rpmpackage import rpmbuild_argv

SOURCE = Source("debian", Path("/s/x"), "x", "1.0-1", ())


@pytest.fixture
def bookworm() -> Profile:
    return ProfileRegistry([shipped_configs_dir()]).load("debian-bookworm")


def test_the_cpus_are_shared_among_the_builds_at_once(bookworm: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    request = BuildRequest(SOURCE, Path("/r"))
    assert build_jobs(request, bookworm, 1) == 8
    assert build_jobs(request, bookworm, 2) == 4
    assert build_jobs(request, bookworm, 3) == 2  # never more jobs than CPUs, all builds counted
    assert build_jobs(request, bookworm, 16) == 1  # and never fewer than one
    # The CPUs this process may run on (its affinity, as nproc counts them), not the machine's.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 5})
    assert build_jobs(request, bookworm, 1) == 2


def test_a_profiles_cpu_limit_caps_its_builds_jobs(bookworm: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    request = BuildRequest(SOURCE, Path("/r"))
    assert build_jobs(request, replace(bookworm, limits=Limits(cpus=1.5)), 1) == 2  # jobs that fill the quota
    assert build_jobs(request, replace(bookworm, limits=Limits(cpus=0.25)), 1) == 1
    assert build_jobs(request, replace(bookworm, limits=Limits(cpus=6)), 2) == 4  # the share is smaller


def test_build_jobs_given_wins_and_zero_gives_none(bookworm: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)))
    limited = replace(bookworm, limits=Limits(cpus=1))
    assert build_jobs(BuildRequest(SOURCE, Path("/r"), build_jobs=12), limited, 4) == 12
    assert build_jobs(BuildRequest(SOURCE, Path("/r"), build_jobs=0), bookworm, 1) == 0


def test_parallel_is_added_unless_the_users_options_say_it() -> None:
    assert deb_build_options("", 4, forced=False) == "parallel=4"
    assert deb_build_options("nocheck  noopt", 2, forced=False) == "nocheck noopt parallel=2"
    assert deb_build_options("nocheck parallel=7", 2, forced=False) == "nocheck parallel=7"  # the user's stays
    assert deb_build_options("parallel=7 nocheck", 3, forced=True) == "nocheck parallel=3"  # --build-jobs wins
    assert deb_build_options("nocheck", 0, forced=True) == "nocheck"  # --build-jobs 0: nothing added
    assert deb_build_options("", 0, forced=False) == ""


def test_rpmbuild_is_given_the_jobs_as_mock_gives_them() -> None:
    spec = Source("rpm", Path("/s/x.spec"), "x", "1", ())
    argv = rpmbuild_argv(spec, "binary", 3)
    assert "_smp_build_ncpus 3" in argv and "_smp_mflags -j3" in argv
    assert not [part for part in rpmbuild_argv(spec, "binary", 0) if "_smp" in part]
