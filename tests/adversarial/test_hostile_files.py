"""Files a user names, or a project (a cloned repository) holds, read as hostile input.

Each test names the hole it proves; each failed before linux.regular_bytes was used for it:

- a profile file (``run ./p.yaml``, a project's sandboxmgr.yaml) was read whole: a sparse
  file of 64 GiB was an internal MemoryError (or, smaller, filled the host's memory);
- a seccomp profile (``--security-opt seccomp=FILE``, ``seccomp:`` in a profile) the same;
- ``sandboxmgr trust`` of a project whose profile names a keyring that is a FIFO (a
  repository can hold one) blocked forever: the key's bytes were read to be hashed, unbounded,
  before anything checked what the file was;
- ``package build DIR`` of a source tree whose debian/changelog is a FIFO blocked forever.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI, Result

pytestmark = pytest.mark.adversarial

HUGE = 64 << 30  # sparse: no disk, and more than this machine's memory


def sparse(path: Path, size: int = HUGE) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def one_line(result: Result, words: str) -> None:
    lines = result.err.splitlines()
    assert result.code == 125, str(result)
    assert len(lines) == 2 and lines[1].startswith("hint: "), str(result)
    assert words in lines[0], str(result)
    assert "internal error" not in result.err, str(result)


def test_a_huge_profile_file_is_one_line_not_read_whole(tmp_path: Path) -> None:
    profile = sparse(tmp_path / "big.yaml")
    result = CLI(tmp_path / "store")("run", str(profile), "--", "true", timeout=60)
    one_line(result, f"cannot read profile {profile}: larger than 4 MiB")


def test_a_projects_huge_sandboxmgr_yaml_is_one_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    sparse(project / "sandboxmgr.yaml")
    result = CLI(tmp_path / "store")("matrix", "-C", str(project), timeout=60)
    one_line(result, "larger than 4 MiB")


def test_a_huge_seccomp_profile_is_one_line_not_read_whole(tmp_path: Path) -> None:
    policy = sparse(tmp_path / "big.json")
    result = CLI(tmp_path / "store")("run", "--security-opt", f"seccomp={policy}", "debian-bookworm", "--", "true",
                                     timeout=60)
    one_line(result, f"seccomp profile {policy}: larger than 4 MiB")


def test_trusting_a_project_whose_keyring_is_a_fifo_does_not_block(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    os.mkfifo(project / "key.gpg")
    (project / "sandboxmgr.yaml").write_text(
        "profiles: [p]\ncommand: 'true'\ninline:\n  p:\n    extends: debian-bookworm\n"
        "    bootstrap:\n      keyring: key.gpg\n")
    cli = CLI(tmp_path / "store")
    try:
        result = cli("trust", str(project), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("sandboxmgr trust blocked on the project's FIFO")
    assert "internal error" not in result.err, str(result)
    assert result.code == 0, str(result)


def test_a_source_trees_fifo_changelog_is_one_line_not_a_hang(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "debian").mkdir(parents=True)
    (source / "debian" / "control").write_text("Source: x\nBuild-Depends: debhelper\n\nPackage: x\nArchitecture: any\n")
    os.mkfifo(source / "debian" / "changelog")
    try:
        result = CLI(tmp_path / "store")("package", "build", str(source), "-p", "debian-bookworm",
                                         "--results", str(tmp_path / "out"), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("package build blocked on the source tree's FIFO")
    one_line(result, f"cannot read {source}/debian/changelog: not a regular file")


@pytest.mark.parametrize(("name", "make", "why"), [
    ("garbage.deb", lambda path: path.write_bytes(b"not a package\n"), "not an ar archive"),
    ("fifo.deb", lambda path: os.mkfifo(path), "not a regular file"),
    ("garbage.rpm", lambda path: path.write_bytes(b"!<arch>\n"), "no RPM lead"),
])
def test_package_test_of_a_file_that_is_no_package_is_one_line_before_any_sandbox(
        tmp_path: Path, name: str, make: Callable[[Path], None], why: str) -> None:
    """Before, a garbage .deb failed in each profile's sandbox with apt's puzzling "the package
    lists or status file could not be parsed", and a FIFO one blocked it."""
    package = tmp_path / name
    make(package)
    profile = "debian-bookworm" if name.endswith(".deb") else "fedora-44"
    try:
        result = CLI(tmp_path / "store")("package", "test", str(package), "-p", profile, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("package test blocked on the FIFO")
    one_line(result, f"{package} is not a {package.suffix} package ({why})")
    assert not (tmp_path / "store" / "images").exists() or not any((tmp_path / "store" / "images").iterdir())
