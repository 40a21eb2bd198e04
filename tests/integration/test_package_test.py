"""`sandboxmgr package test`, and package build's -j, --fail-fast and --junit: packages the
tests build from sources they write (tests.integration.test_package.source)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import CLI, ConcurrentBuild
from tests.integration.test_json_shapes import check, documented
from tests.integration.test_package import source

pytestmark = [pytest.mark.root, pytest.mark.network]

# A script test as the test user, one as root, a Test-Command with a Depends from the archive,
# and one whose restriction sandboxmgr does not give (skipped, as autopkgtest skips it).
TESTS = """\
Tests: greets
Depends: @

Tests: as-root
Restrictions: needs-root

Test-Command: sm-tested && hello -g from-the-archive
Depends: @, hello

Tests: rebooting
Restrictions: needs-reboot
"""
GREETS = """\
#!/bin/sh
set -e
test "$(sm-tested)" = "hello, world"
test "$(id -u)" != 0
test -f debian/tests/control
echo "greeted in $AUTOPKGTEST_TMP"
"""
HOST = "$$(cat /proc/sys/kernel/hostname)"  # in debian/rules: the sandbox's name, so the profile's
AS_ROOT = "#!/bin/sh\nset -e\ntest \"$(id -u)\" = 0\necho as-root\n"


def built(cli: CLI, tree: Path, out: Path, *profiles: str) -> Path:
    """``tree`` built by package build; its results directory."""
    args = [arg for profile in profiles or ("debian-bookworm",) for arg in ("-p", profile)]
    result = cli("package", "build", str(tree), *args, "--results", str(out), "--json")
    assert result.code == 0, str(result)
    return out


def package_test(cli: CLI, *args: str) -> tuple[int, list[dict[str, object]], str]:
    result = cli("package", "test", "--json", *args)
    assert result.code in (0, 1), str(result)
    return result.code, json.loads(result.out), result.err


def junit_cases(path: Path) -> dict[str, ElementTree.Element]:
    suite = ElementTree.parse(path).getroot().find("testsuite")
    assert suite is not None
    return {case.get("name", ""): case for case in suite.iter("testcase")}


def test_a_package_installs_passes_its_own_tests_and_purges_cleanly(cli: CLI, bookworm: ConcurrentBuild,
                                                                    tmp_path: Path) -> None:
    tree = source(tmp_path, "sm-tested", files={"tests/control": TESTS, "tests/greets": GREETS,
                                                "tests/as-root": AS_ROOT})
    out = built(cli, tree, tmp_path / "out")
    assert (out / "debian-bookworm" / "source-tree.tar.gz").is_file()
    junit = tmp_path / "junit.xml"
    code, (row,), err = package_test(cli, "--results", str(out), "-p", "debian-12", "--check", "sm-tested",
                                     "--junit", str(junit))
    assert code == 0 and row["status"] == "passed" and row["stage"] is None, (row, err)
    check([row], documented("### Package tests"))
    assert row["name"] == "debian-12" and row["profile"] == "debian-bookworm" and row["leftovers"] == []
    assert row["results"] == str(out / "debian-bookworm")
    log = Path(str(row["log"])).read_text()
    for line in ("# check: sm-tested", "# autopkgtest greets: PASS", "# autopkgtest as-root: PASS",
                 "# autopkgtest command1: PASS", "# autopkgtest rebooting: SKIP (restriction needs-reboot is not "
                 "supported)", "# leftovers: none"):
        assert line in log, log
    assert "greeted in /tmp/" in log and "from-the-archive" in log, log
    case = junit_cases(junit)["debian-12"]
    assert case.find("failure") is None and case.find("skipped") is None
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkgtest-")]


def test_each_failure_of_a_package_test_names_its_stage(cli: CLI, bookworm: ConcurrentBuild, tmp_path: Path) -> None:
    stray = "#!/bin/sh\nmkdir -p /var/lib/sm-stray && echo state > /var/lib/sm-stray/state\n" \
            "echo made > /etc/sm-stray.conf\n"
    failing = "#!/bin/sh\necho 'the test is unhappy'\nexit 4\n"
    trees = {
        "leftovers": source(tmp_path, "sm-stray", files={"postinst": stray}),
        "tests": source(tmp_path, "sm-failing", files={"tests/control": "Tests: unhappy\n", "tests/unhappy": failing}),
        "install": source(tmp_path, "sm-uninstallable", depends=", sm-no-such-package-xyz"),
        "noisy": source(tmp_path, "sm-noisy", files={"tests/control": "Test-Command: echo noise >&2\n"}),
    }
    for stage, tree in trees.items():
        out = built(cli, tree, tmp_path / "out" / stage)
        junit = tmp_path / f"{stage}.xml"
        code, (row,), err = package_test(cli, "--results", str(out), "-p", "debian-bookworm", "--junit", str(junit))
        expected = "tests" if stage == "noisy" else stage
        assert code == 1 and row["status"] == "failed" and row["stage"] == expected, (stage, row, err)
        failure = junit_cases(junit)["debian-bookworm"].find("failure")
        assert failure is not None and failure.get("type") == expected, stage
        assert [(p.get("name"), p.get("value")) for p in junit_cases(junit)["debian-bookworm"].iter("property")] \
            == [("stage", expected)]
        if stage == "leftovers":
            assert row["leftovers"] == ["/etc/sm-stray.conf", "/var/lib/sm-stray", "/var/lib/sm-stray/state"], row
            assert "/etc/sm-stray.conf" in str(row["reason"])
        elif stage == "install":
            assert row["packages"] == ["sm-no-such-package-xyz"], row
        elif stage == "tests":
            assert "autopkgtest unhappy failed (exit status 4)" in str(row["reason"]), row
            assert "the test is unhappy" in (failure.text or "")
        else:
            assert "wrote to stderr" in Path(str(row["log"])).read_text()
    # A --check is a test too; .deb files are taken as they are given.
    deb = tmp_path / "out" / "leftovers" / "debian-bookworm" / "sm-stray_1.0-1_amd64.deb"
    code, (row,), _ = package_test(cli, str(deb), "-p", "debian-bookworm", "--check", "test -x /usr/bin/sm-stray",
                                   "--check", "exit 9")
    assert code == 1 and row["stage"] == "tests" and "--check 'exit 9' exited with status 9" in str(row["reason"])
    code, (row,), _ = package_test(cli, str(deb), "-p", "debian-bookworm", "--check", "sleep 6178", "--timeout", "3")
    assert code == 1 and row["stage"] == "timeout" and float(str(row["duration"])) < 60, row
    assert subprocess.run(["pgrep", "-f", "sleep 6178"], capture_output=True).returncode != 0
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkgtest-")]


def test_package_test_refuses_what_it_cannot_test(cli: CLI, tmp_path: Path) -> None:
    rpm = tmp_path / "x-1.0-1.x86_64.rpm"
    rpm.write_bytes(b"\xed\xab\xee\xdb")  # an RPM lead: the family is what is refused
    empty = tmp_path / "empty"
    empty.mkdir()
    deb = tmp_path / "x_1.0_amd64.deb"
    deb.write_bytes(b"!<arch>\n")  # an ar archive: the family is what is refused
    text = tmp_path / "notes.txt"
    text.write_text("")
    for args, said in (((str(rpm),), f"debian-bookworm is a profile of the debian family and {rpm} is not a .deb"),
                       ((str(text),), "not a .deb or .rpm file"),
                       ((), "no packages to test"),
                       (("--results", str(empty)), "holds no .deb file for debian-bookworm"),
                       ((str(deb), "-p", "fedora"), "fedora is a profile of the rpm family")):
        result = cli("package", "test", "-p", "debian-bookworm", *args)
        assert result.code == 125 and said in result.err and "hint:" in result.err, str(result)


def twin(cli: CLI) -> str:
    """A second profile of bookworm's image: two profiles at once for the price of one image."""
    assert cli.configs is not None
    (cli.configs / "bookworm-twin.yaml").write_text("extends: debian-bookworm\ndescription: a second name\n")
    return "bookworm-twin"


def test_ctrl_c_stops_every_package_test_and_leaves_nothing(cli: CLI, bookworm: ConcurrentBuild,
                                                           tmp_path: Path) -> None:
    out = built(cli, source(tmp_path, "sm-waiting"), tmp_path / "out")
    proc = subprocess.Popen(cli.argv("package", "test", "--results", str(out / "debian-bookworm"), "-p",
                                     "debian-bookworm", "-p", twin(cli), "-j", "2", "--check", "sleep 6179"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(["pgrep", "-fxc", "sleep 6179"], capture_output=True, text=True).stdout.strip() != "2":
            assert time.monotonic() < deadline and proc.poll() is None, "the checks never ran in both profiles"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out_text, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert out_text.count("cancelled") == 2, out_text
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkgtest-")]
    assert subprocess.run(["pgrep", "-f", "sleep 6179"], capture_output=True).returncode != 0


def test_package_build_runs_profiles_at_once_and_fail_fast_stops_the_rest(cli: CLI, bookworm: ConcurrentBuild,
                                                                        tmp_path: Path) -> None:
    twin(cli)
    # The twin's build sleeps; debian-bookworm's fails at once and stops it.
    tree = source(tmp_path, "sm-pair", build=f"case {HOST} in *twin*) sleep 6176;; *) exit 3;; esac")
    junit = tmp_path / "junit.xml"
    result = cli("package", "build", str(tree), "-p", "debian-bookworm", "-p", twin(cli), "-j", "2",
                 "--fail-fast", "--results", str(tmp_path / "out"), "--json", "--junit", str(junit), "--timeout", "300")
    assert result.code == 1, str(result)
    rows = {row["name"]: row for row in json.loads(result.out)}
    assert rows["debian-bookworm"]["stage"] == "build" and rows["bookworm-twin"]["status"] == "cancelled", rows
    assert float(rows["bookworm-twin"]["duration"]) < 60, rows
    cases = junit_cases(junit)
    failure = cases["debian-bookworm"].find("failure")
    assert failure is not None and failure.get("type") == "build" and "exit 3" in (failure.text or "")
    assert cases["bookworm-twin"].find("skipped") is not None
    assert subprocess.run(["pgrep", "-f", "sleep 6176"], capture_output=True).returncode != 0
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("pkg-")]
    # A build-deps failure is the first failure too: the twin is not built at all.
    tree = source(tmp_path, "sm-pairdeps", deps="make, sm-no-such-package-xyz")
    result = cli("package", "build", str(tree), "-p", "debian-bookworm", "-p", "bookworm-twin", "--fail-fast",
                 "--results", str(tmp_path / "out1"), "--json")
    assert result.code == 1, str(result)
    assert [(row["status"], row["stage"]) for row in json.loads(result.out)] == [("failed", "build-deps"),
                                                                                 ("cancelled", None)]
    # Without --fail-fast both run to their end, at once: the twin's build passes.
    tree = source(tmp_path, "sm-pair2", build=f"case {HOST} in *twin*) true;; *) exit 3;; esac")
    result = cli("package", "build", str(tree), "-p", "debian-bookworm", "-p", "bookworm-twin", "-j", "2",
                 "--results", str(tmp_path / "out2"), "--json")
    assert result.code == 1, str(result)
    assert [(row["name"], row["status"]) for row in json.loads(result.out)] == [
        ("debian-bookworm", "failed"), ("bookworm-twin", "passed")]
    assert "[bookworm-twin] passed in" in result.err and "[debian-bookworm] failed in" in result.err
