"""debian/tests/control as package test reads it, and the JUnit of package jobs (no root)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from sandboxmgr.package import PackageResult
from sandboxmgr.pkgsource import SourceError
from sandboxmgr.runner import junit
from sandboxmgr.testcontrol import parse_tests, read_tests

CONTROL = """\
Tests: first, second
Depends: @, python3 (>= 3.9) | python3-minimal, libfoo1:amd64 [amd64]
Restrictions: allow-stderr needs-root

# a comment
Test-Command: hello
 --version
Tests-Directory: tests/pkg

Tests: builder
Depends: @builddeps@

Tests: rebooter
Restrictions: needs-reboot, allow-stderr
"""


def test_each_test_of_a_control_file_with_its_depends_restrictions_and_why_it_is_skipped() -> None:
    tests = parse_tests(CONTROL, "control")
    assert [(t.name, t.script, t.command) for t in tests] == [
        ("first", "debian/tests/first", None), ("second", "debian/tests/second", None),
        ("command1", None, "hello  --version"), ("builder", "debian/tests/builder", None),
        ("rebooter", "debian/tests/rebooter", None)]
    assert tests[0].depends == ("python3", "libfoo1:amd64")
    assert tests[0].restrictions == {"allow-stderr", "needs-root"} and not tests[0].skip
    assert tests[2].depends == ()  # no Depends: "@", the tested packages
    assert tests[3].skip == "Depends: @builddeps@ is not supported"
    assert tests[4].skip == "restriction needs-reboot is not supported"


@pytest.mark.parametrize(("text", "said"), [
    ("Tests: ../../etc/x\n", "is not a test name"),
    ("Tests: a;reboot\n", "is not a test name"),
    ("Tests: a\nTests-Directory: ../up\n", "is not a path in the tree"),
    ("Tests: a\nTests-Directory: /abs\n", "is not a path in the tree"),
    ("Tests: a\nDepends: $(reboot)\n", "not a package"),
    ("Depends: @\n", "neither Tests nor Test-Command"),
])
def test_what_would_reach_a_command_line_is_checked(text: str, said: str) -> None:
    with pytest.raises(SourceError, match=said.replace("(", r"\(")):
        parse_tests(text, "control")


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_the_control_file_is_read_from_the_saved_source_tree_only(tmp_path: Path) -> None:
    tree = _tarball(tmp_path / "tree.tar.gz", {"sm-1.0/hello.c": b"int main;", "sm-1.0/debian/tests/control":
                                               b"Tests: smoke\n"})
    assert [t.name for t in read_tests(tree)] == ["smoke"]
    nested = _tarball(tmp_path / "nested.tar.gz", {"sm-1.0/sub/debian/tests/control": b"Tests: no\n"})
    assert read_tests(nested) == []
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball")
    with pytest.raises(SourceError, match="cannot read"):
        read_tests(broken)


def test_a_package_jobs_junit_carries_the_stage() -> None:
    results = [PackageResult("a", "a", "passed", duration=1.0),
               PackageResult("b", "b", "failed", stage="build-deps", reason="apt says no", duration=2.0),
               PackageResult("c", "c", "cancelled")]
    root = ElementTree.fromstring(junit(results, "sandboxmgr package build", "package.build",
                                        lambda r: f"log: {r.log}\n", cause="stage").split("?>", 1)[1])
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = root.find(".//testcase[@name='b']/failure")
    assert failure is not None and (failure.get("type"), failure.get("message")) == ("build-deps", "apt says no")
    assert [(p.get("name"), p.get("value")) for p in root.iter("property")] == [("stage", "build-deps")]
