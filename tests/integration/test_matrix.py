"""`sandboxmgr matrix`: a small real project across two Debian releases and the local RPM distro."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from sandboxmgr import mountinfo
from tests.conftest import CLI, DEBIAN_MIRROR, ConcurrentBuild, need_mirror
from tests.rpmrepo import RpmRepo, tiny_profile

pytestmark = [pytest.mark.root, pytest.mark.network]

CHECK = """\
#!/bin/sh
# The project's test suite: it builds into ./build and checks what it needs.
set -e
test ! -e build/result || { echo "saw another run's build products"; exit 9; }
. /etc/os-release
mkdir -p build
echo "$ID $VERSION_ID" > build/result
test -e /etc/prepared || { echo "prepare did not run"; exit 3; }
test "$GREETING" = hello || { echo "project env missing"; exit 4; }
if [ -n "$BROKEN" ]; then echo "broken on purpose"; exit 5; fi
echo "ok on $ID"
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo, cli: CLI) -> Path:
    root = tmp_path_factory.mktemp("myproject")
    (root / "check.sh").write_text(CHECK)
    tiny = root / "tiny.yaml"
    tiny.write_text(tiny_profile(rpm_repo))
    (root / "sandboxmgr.yaml").write_text(
        "profiles: [debian-bookworm, debian-trixie, tiny, broken]\n"
        "command: sh check.sh\n"
        "env: {GREETING: hello}\n"
        "prepare:\n"
        "  debian: [echo prepared > /etc/prepared]\n"
        "  tinydistro: [echo prepared > /etc/prepared]\n"
        "inline:\n"
        "  tiny:\n"
        "    extends: tiny.yaml\n"
        "  broken:\n"
        "    extends: debian-bookworm\n"
        "    env: {BROKEN: '1'}\n"
    )
    # tiny.yaml, a file of the project, names a local repository and its key: the user trusts it.
    cli.ok("trust", str(root))
    return root


def matrix(cli: CLI, project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli.argv("matrix", "-C", str(project), *args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_matrix_runs_every_profile_and_reports(cli: CLI, bookworm: ConcurrentBuild, project: Path,
                                               tmp_path: Path) -> None:
    need_mirror(DEBIAN_MIRROR, "trixie")
    before = sorted(p.name for p in project.iterdir())
    junit = tmp_path / "junit.xml"
    result = matrix(cli, project, "--keep-failed", "--junit", str(junit), "-j", "2")
    assert result.returncode == 1, result.stderr
    table = result.stdout
    for name, status in (("debian-bookworm", "passed"), ("debian-trixie", "passed"),
                         ("tiny", "passed"), ("broken", "failed")):
        (row,) = [line for line in table.splitlines() if line.startswith(name + " ")]
        assert status in row.split()
    assert "broken: broken on purpose" in table
    # Logs per profile.
    logs = {line.split()[0]: Path(line.split()[-1]) for line in table.splitlines()[1:5]}
    assert logs["debian-trixie"].read_text().strip().endswith("ok on debian")
    assert logs["tiny"].read_text().strip().endswith("ok on tinydistro")
    # JUnit XML that CI systems read.
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("4", "1")
    failed = [case for case in suite.iter("testcase") if case.find("failure") is not None]
    assert [case.get("name") for case in failed] == ["broken"]
    # The user's tree is untouched: the builds wrote into their own copy-on-write views.
    assert sorted(p.name for p in project.iterdir()) == before
    # --keep-failed keeps the failed profile's sandbox, with its build products, to step into.
    kept = [line.split("sandboxmgr shell ")[1] for line in table.splitlines() if "sandboxmgr shell" in line]
    assert len(kept) == 1
    inside = cli.ok("exec", kept[0], "cat", "/src/build/result")
    assert inside.out.startswith("debian 12")
    names = [s["name"] for s in json.loads(cli.ok("ls", "--json").out)]
    assert names.count(kept[0]) == 1 and not [n for n in names if n.startswith("matrix-") and n != kept[0]]
    cli.ok("rm", kept[0])
    assert not mountinfo.mounts_under(cli.store)
    assert list((cli.store / "tmp").iterdir()) == []


def test_a_second_run_reuses_the_prepare_layers(cli: CLI, bookworm: ConcurrentBuild, project: Path) -> None:
    first = matrix(cli, project, "-p", "debian-bookworm", "-p", "tiny", "--json")
    second = matrix(cli, project, "-p", "debian-bookworm", "-p", "tiny", "--json")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "building layer" not in second.stderr
    results = json.loads(second.stdout)
    assert [(r["name"], r["status"], r["exit_code"]) for r in results] == [
        ("debian-bookworm", "passed", 0), ("tiny", "passed", 0)]


def test_globs_and_the_command_line_command(cli: CLI, bookworm: ConcurrentBuild, project: Path) -> None:
    result = matrix(cli, project, "-p", "debian-book*", "--json", "--", "sh", "-c", "echo from-argv")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["name"] == "debian-bookworm"
    assert Path(entry["log"]).read_text() == "from-argv\n"


def test_fail_fast_cancels_the_rest(cli: CLI, bookworm: ConcurrentBuild, project: Path) -> None:
    result = matrix(cli, project, "-p", "broken", "-p", "debian-bookworm", "-j", "1", "--fail-fast", "--json")
    assert result.returncode == 1
    statuses = {r["name"]: r["status"] for r in json.loads(result.stdout)}
    assert statuses == {"broken": "failed", "debian-bookworm": "cancelled"}
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("matrix-")]


def test_sigint_stops_every_sandbox_and_leaves_nothing(cli: CLI, bookworm: ConcurrentBuild,
                                                       project: Path) -> None:
    before = sorted(Path("/proc/self/mountinfo").read_text().splitlines())
    proc = subprocess.Popen(cli.argv("matrix", "-C", str(project), "-p", "debian-bookworm", "-p", "tiny",
                                     "--", "sleep", "307"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("matrix-")]
        if len(running) == 2 and all(s["in_use"] for s in running):
            break
        time.sleep(0.3)
    assert len(running) == 2, "the matrix never started both profiles"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not [s for s in json.loads(cli.ok("ls", "--json").out) if s["name"].startswith("matrix-")]
    # The kernel ends a sandbox's processes as its PID namespace goes: give it a moment.
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", "sleep 307"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "a sandbox process outlived the interrupted matrix"
        time.sleep(0.2)
    assert sorted(Path("/proc/self/mountinfo").read_text().splitlines()) == before
    assert list((cli.store / "tmp").iterdir()) == []
    assert os.path.isdir(project)


def test_a_failing_prepare_step_names_the_project_file(cli: CLI, bookworm: ConcurrentBuild,
                                                       tmp_path: Path) -> None:
    """The step is in the project's sandboxmgr.yaml, not in the shipped profile: the hint says so."""
    (tmp_path / "sandboxmgr.yaml").write_text(
        "profiles: [debian-bookworm]\ncommand: 'true'\nprepare:\n  debian: ['echo half; exit 7']\n")
    result = matrix(cli, tmp_path)
    assert result.returncode == 125, result.stderr
    assert "failed with exit status 7" in result.stderr, result.stderr
    assert f"fix the step in {tmp_path / 'sandboxmgr.yaml'};" in result.stderr, result.stderr
    assert "configs/" not in result.stderr.split("fix the step", 1)[1], result.stderr
