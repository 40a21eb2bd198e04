"""The matrix's project file and profile selection (no root)."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest

from sandboxmgr.errors import ProfileError
from sandboxmgr.identity import layers
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.matrix import Result, junit
from sandboxmgr.profile import ProfileRegistry
from sandboxmgr.project import Project, entries, expand, load_project


def registry() -> ProfileRegistry:
    return ProfileRegistry([shipped_configs_dir()])


def write_project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sandboxmgr.yaml").write_text(text)
    return tmp_path


def test_a_project_file_is_read_with_inline_profiles_and_prepare(tmp_path: Path) -> None:
    root = write_project(tmp_path, (
        "profiles: [debian-bookworm, mine]\n"
        "command: make check\n"
        "env: {CFLAGS: -O2}\n"
        "prepare:\n  debian: [apt-get install -y make]\n"
        "inline:\n  mine:\n    extends: debian-trixie\n    packages: [hello]\n"
    ))
    project = load_project(root, registry())
    assert project.command == ("/bin/sh", "-c", "make check")
    assert project.env == {"CFLAGS": "-O2"}
    assert project.inline["mine"].release == "trixie"
    assert project.inline["mine"].packages == ("hello",)
    selected = entries(list(project.profiles), project, registry())
    assert [e.name for e in selected] == ["debian-bookworm", "mine"]
    # prepare steps become setup layers over the profile's own layers, per project.
    for entry in selected:
        assert entry.profile.setup[-1] == "apt-get install -y make"
        assert entry.profile.name.startswith(f"{project.slug}.")
    base = layers(registry().load("debian-bookworm"))
    assert layers(selected[0].profile)[0].key == base[0].key


def test_project_file_errors_name_the_line_including_inline_profiles(tmp_path: Path) -> None:
    root = write_project(tmp_path, (
        "profiles: [debian-bookworm]\n"
        "comand: make\n"
        "inline:\n"
        "  mine:\n"
        "    extends: debian-trixie\n"
        "    packges: [hello]\n"
    ))
    with pytest.raises(ProfileError) as info:
        load_project(root, registry())
    assert ":2: comand: unknown key; did you mean 'command'?" in info.value.message
    with pytest.raises(ProfileError) as info:
        load_project(write_project(tmp_path, "inline:\n  mine:\n    extends: debian-trixie\n    packges: [x]\n"),
                     registry())
    assert ":4: inline.mine.packges: unknown key; did you mean 'packages'?" in info.value.message


def test_globs_expand_over_profile_names(tmp_path: Path) -> None:
    project = Project(path=None, root=tmp_path)
    names = expand(["ubuntu-*", "debian-bookworm", "ubuntu-noble"], project, registry())
    assert names == ["ubuntu-jammy", "ubuntu-noble", "ubuntu-resolute", "debian-bookworm"]
    with pytest.raises(ProfileError, match="no profile matches"):
        expand(["nothing-*"], project, registry())


def test_junit_marks_failures_and_cancellations(tmp_path: Path) -> None:
    project = Project(path=None, root=tmp_path / "proj")
    results = [Result("a", "p.a", "passed", 0, duration=1.0), Result("b", "p.b", "failed", 2, duration=2.0,
                                                                      reason="boom"),
               Result("c", "p.c", "cancelled")]
    root = ElementTree.fromstring(junit(results, project, ("make", "check")).split("?>", 1)[1])
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = root.find(".//testcase[@name='b']/failure")
    assert failure is not None and failure.get("message") == "exit code 2: boom"


def test_a_prepare_key_that_names_nothing_is_an_error_with_a_close_name(tmp_path: Path) -> None:
    root = write_project(tmp_path, (
        "profiles: [debian-bookworm]\n"
        "prepare:\n"
        "  debian-bookworm: [\"true\"]\n"
        "  rpm: [\"true\"]\n"
        "  ubuntu: [\"true\"]\n"
        "  debain: [apt-get install -y make]\n"
    ))
    project = load_project(root, registry())
    with pytest.raises(ProfileError) as info:
        entries(list(project.profiles), project, registry())
    assert info.value.message.startswith(f"{root / 'sandboxmgr.yaml'}:6: prepare.debain: names no profile")
    assert "did you mean 'debian'?" in info.value.message
    assert info.value.hint is not None and "distro" in info.value.hint
