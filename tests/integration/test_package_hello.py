"""The real thing: GNU hello's Debian source, as the profile's mirror serves it, built by
`package build` on bookworm and trixie, then installed, tested and purged by `package test`
on bookworm, trixie and Ubuntu noble."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import CLI, DEBIAN_MIRROR, UBUNTU_MIRROR, ConcurrentBuild, missing, need_mirror
from tests.integration.test_json_shapes import check, documented

pytestmark = [pytest.mark.root, pytest.mark.network]

# What apt says when the archive lacks something or cannot be reached: an outside cause.
ARCHIVE_SILENT = re.compile(r"Unable to find a source package|Failed to fetch|Temporary failure resolving|"
                            r"Could not connect|Unable to connect|404\s+Not Found")


def hello_source(cli: CLI, profile: str, into: Path) -> Path:
    """hello's .dsc with its files, fetched by `apt-get source` in a sandbox of ``profile`` from
    its own mirror (a deb-src line beside its deb line): apt checks them against the release's
    signed Sources index."""
    into.mkdir()
    fetch = ("set -e; sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/src.list; "
             "apt-get update -q; cd /out; apt-get source -q --download-only hello")
    result = cli("run", "-v", f"{into}:/out", profile, "--", "/bin/sh", "-c", fetch)
    said = result.out + result.err
    if result.code != 0 and ARCHIVE_SILENT.search(said):
        last = said.strip().splitlines()[-1]
        missing(f"the mirror does not serve hello's source for {profile}: {last}", required_on_ci=False)
    assert result.code == 0, str(result)
    (dsc,) = into.glob("hello_*.dsc")
    return dsc


def test_hello_builds_on_bookworm_and_trixie_and_tests_clean_on_three_distros(cli: CLI, bookworm: ConcurrentBuild,
                                                                               tmp_path: Path) -> None:
    need_mirror(DEBIAN_MIRROR, "trixie", required_on_ci=False)  # a frozen mirror may lack a release
    dsc = hello_source(cli, "debian-bookworm", tmp_path / "source")
    version = dsc.stem.split("_", 1)[1]
    out = tmp_path / "out"
    junit = tmp_path / "build.xml"
    # One source, two releases, at once: trixie builds bookworm's hello (as a backport would).
    built = cli("package", "build", str(dsc), "-p", "debian-bookworm", "-p", "debian-trixie", "-j", "2",
                "--results", str(out), "--json", "--junit", str(junit))
    assert built.code == 0, str(built)
    rows = json.loads(built.out)
    assert [(row["name"], row["status"]) for row in rows] == [("debian-bookworm", "passed"),
                                                              ("debian-trixie", "passed")], rows
    check(rows, documented("### Package builds"))
    for profile in ("debian-bookworm", "debian-trixie"):
        names = {path.name for path in (out / profile).iterdir()}
        assert {f"hello_{version}_amd64.deb", f"hello_{version}_amd64.changes", f"hello_{version}_amd64.buildinfo",
                "build.log", "build-info.json", "source-tree.tar.gz"} <= names, (profile, names)
        info = json.loads((out / profile / "build-info.json").read_text())
        assert info["toolchain"]["debhelper"], info
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "0")

    check_hello = 'test "$(hello)" = "Hello, world!"'
    tested = cli("package", "test", "--results", str(out), "-p", "debian-bookworm", "-p", "debian-trixie",
                 "--check", check_hello, "--json")
    assert tested.code == 0, str(tested)
    rows = json.loads(tested.out)
    check(rows, documented("### Package tests"))
    need_mirror(UBUNTU_MIRROR, "noble", required_on_ci=False)
    # Ubuntu has no results of its own: it tests what bookworm built.
    tested = cli("package", "test", "--results", str(out / "debian-bookworm"), "-p", "ubuntu-noble",
                 "--check", check_hello, "--json")
    assert tested.code == 0, str(tested)
    rows += json.loads(tested.out)
    assert [(row["profile"], row["status"], row["leftovers"]) for row in rows] == [
        ("debian-bookworm", "passed", []), ("debian-trixie", "passed", []), ("ubuntu-noble", "passed", [])], rows
    for row in rows:
        log = Path(row["log"]).read_text()
        # hello's debian/tests/control: a Test-Command, and upstream's own tests from the tree.
        for line in ("# autopkgtest command1: PASS", "# autopkgtest upstream-tests: PASS", "# purge",
                     "# leftovers: none"):
            assert line in log, (row["profile"], log[-3000:])
        assert "Testing greeting-1" in log, log[-3000:]
