"""Lock files and bug-report recreation against a real, signed apt repository served on
127.0.0.1 (tests/aptrepo.py) that holds sbm-hello at 1.0 and 2.0, next to Debian's archive.

One store for the module: its profiles share one bootstrap layer (the repository is
added by an mmdebstrap setup hook), so each test builds a layer or two on top of it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.aptrepo import AptRepo, build_repo, serve
from tests.conftest import CLI, DEBIAN_MIRROR, ConcurrentBuild, missing, need_mirror, need_root

pytestmark = [pytest.mark.root, pytest.mark.network]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptRepo]:
    need_root()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    for tool in ("dpkg-deb", "gpg", "mmdebstrap"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed")
    with serve(build_repo(tmp_path_factory.mktemp("aptrepo"))) as served:
        yield served


@pytest.fixture(scope="module")
def locker(tmp_path_factory: pytest.TempPathFactory, repo: AptRepo) -> CLI:
    """A store and profiles: lk-old installs sbm-hello 1.0; its lock is configs/old.lock."""
    top = tmp_path_factory.mktemp("lock")
    (top / "configs").mkdir()
    cli = CLI(top / "store", top / "configs")
    cli.write_profile("lk-base", f"extends: debian-bookworm\nbootstrap:\n  method: mmdebstrap\n"
                          f"  extra_args: [{json.dumps(repo.source_hook())}]\n")
    cli.write_profile("lk-old", "extends: lk-base\npackages: [sbm-hello=1.0]\n")
    cli.ok("build", "lk-old")
    cli.ok("lock", "lk-old", "-o", str(cli.profiles / "old.lock"))
    return cli




def locked_packages(path: Path) -> dict[str, str]:
    return {p["name"]: p["version"] for p in yaml.safe_load(path.read_text())["packages"]}


def images_of(cli: CLI, profile: str) -> list[str]:
    return [row["key"] for row in json.loads(cli.ok("images", "--json").out) if row["profile"] == profile]


def test_lock_lists_the_installed_version_and_what_dpkg_query_lists_inside(locker: CLI) -> None:
    lock = yaml.safe_load((locker.profiles / "old.lock").read_text())
    assert lock["profile"] == "lk-old" and lock["image"] == images_of(locker, "lk-old")[0]
    assert (lock["distro"], lock["release"], lock["arch"], lock["mirror"]) == (
        "debian", "bookworm", "amd64", DEBIAN_MIRROR)
    assert lock["archive_date"]  # the Debian Release file's Date, from the image's apt lists
    assert {"name": "sbm-hello", "version": "1.0", "arch": "all"} in lock["packages"]
    inside = locker.ok("run", "lk-old", "--", "dpkg-query", "-W", "-f", "${Package} ${Version} ${Architecture}\\n")
    assert sorted(inside.out.split("\n")[:-1]) == sorted(
        f"{p['name']} {p['version']} {p['arch']}" for p in lock["packages"])


def test_a_build_from_the_lock_installs_the_locked_version_though_a_newer_exists(locker: CLI) -> None:
    locker.write_profile("lk-latest", "extends: lk-base\npackages: [sbm-hello]\n")
    locker.write_profile("lk-locked", "extends: lk-base\npackages: [sbm-hello]\nlock: old.lock\n")
    version = ["cat", "/usr/share/sbm-hello/version"]
    assert locker.ok("run", "lk-latest", "--", *version).out == "2.0\n"  # the archive's newest
    assert locker.ok("run", "lk-locked", "--", *version).out == "1.0\n"
    # The lock's content is part of the image key: the same lock, the same image.
    key = images_of(locker, "lk-locked")
    assert len(key) == 1 and key != images_of(locker, "lk-latest")
    result = locker.ok("build", "lk-locked")
    assert f"image {key[0]}" in result.out


def test_a_locked_version_the_archive_lacks_fails_with_one_line_and_no_image(locker: CLI) -> None:
    text = (locker.profiles / "old.lock").read_text()
    assert "{name: sbm-hello, version: '1.0', arch: all}" in text
    (locker.profiles / "gone.lock").write_text(text.replace("{name: sbm-hello, version: '1.0'",
                                                            "{name: sbm-hello, version: '3.0'"))
    locker.write_profile("lk-gone", "extends: lk-base\nlock: gone.lock\n")
    result = locker("build", "lk-gone")
    assert result.code == 125, str(result)
    error, hint = result.err.strip().split("\n")[-2:]
    assert error == (f"sandboxmgr: error: lk-gone: the archive ({DEBIAN_MIRROR}) lacks sbm-hello=3.0 "
                     f"(locked in {locker.profiles / 'gone.lock'})")
    assert hint.startswith("hint: point bootstrap.mirror at an archive of the lock's date")
    assert "https://snapshot.debian.org/archive/debian/" in hint
    assert images_of(locker, "lk-gone") == []


def test_an_image_that_differs_from_its_lock_is_refused_and_not_kept(locker: CLI) -> None:
    lock = locker.profiles / "old.lock"
    lines = [line for line in lock.read_text().splitlines(keepends=True) if "{name: tzdata," not in line]
    assert len(lines) == len(lock.read_text().splitlines()) - 1  # the bootstrap installs tzdata
    (locker.profiles / "short.lock").write_text("".join(lines))
    locker.write_profile("lk-short", "extends: lk-base\nlock: short.lock\n")
    result = locker("build", "lk-short")
    assert result.code == 125, str(result)
    assert "the image of lk-short does not match" in result.err
    assert "1 package installed but not locked: tzdata=" in result.err and "no image was kept" in result.err
    assert images_of(locker, "lk-short") == []


def test_recreate_pins_the_versions_a_reportbug_text_names(locker: CLI, tmp_path: Path) -> None:
    base_files = locked_packages(locker.profiles / "old.lock")["base-files"]
    report = tmp_path / "report.txt"
    report.write_text("Package: sbm-hello\nVersion: 1.0\nSeverity: normal\n\nIt breaks.\n\n"
                      "-- System Information:\nDebian Release: 12.5\n\n"
                      "Versions of packages sbm-hello depends on:\n"
                      f"ii  base-files  {base_files}\nii  debconf [debconf-2.0]  0.0.1\n"
                      "pn  frobnicate  <none>\n\n-- no debconf information\n")
    profile = tmp_path / "bug1.yaml"
    result = locker("recreate", str(report), "-p", "lk-base", "--as", "bug1", "-o", str(profile))
    assert result.code == 0, str(result)
    assert "the archive lacks 1 named version: debconf=0.0.1" in result.out
    assert "bug1: image " in result.out and "2 versions pinned" in result.out
    assert "# The archive lacks debconf=0.0.1: not pinned." in profile.read_text()
    inside = locker.ok("run", str(profile), "--", "dpkg-query", "-W", "sbm-hello", "base-files")
    assert inside.out == f"base-files\t{base_files}\nsbm-hello\t1.0\n"


def test_lock_of_the_session_bookworm_image(cli: CLI, bookworm: ConcurrentBuild) -> None:
    lock = json.loads(cli.ok("lock", bookworm.profile, "--json").out)
    assert lock["profile"] == "debian-bookworm" and lock["lock_format"] == 1
    names = {p["name"] for p in lock["packages"]}
    assert {"apt", "dpkg", "libc6", "bash"} <= names
    inside = cli.ok("run", bookworm.profile, "--", "dpkg-query", "-W", "-f", "${Package}\\n")
    assert set(inside.out.split()) == names
