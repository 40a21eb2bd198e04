"""Lock files and bug-report recreation for the RPM family, against the tests' own signed RPM
repository (tests/rpmrepo.py) with tinydistro-greeting at 1-1 and at 1:2-1.

One store for the module; each Tiny Distro build takes a second or two.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI, need_root
from tests.integration.test_json_shapes import check, documented
from tests.rpmrepo import GREETING, GREETING_2, RpmRepo, add_greeting_2, tiny_profile

pytestmark = [pytest.mark.root]
GREETING_FILE = "/usr/share/tinydistro/greeting"


@pytest.fixture(scope="module")
def locker(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> CLI:
    """A store and profiles: rl-old over the repository of greeting 1-1 only, its lock
    configs/old.lock; rl-latest over the one that has 1:2-1 too."""
    need_root()
    top = tmp_path_factory.mktemp("rpmlock")
    (top / "configs").mkdir()
    both = add_greeting_2(rpm_repo, top / "two-versions")
    cli = CLI(top / "store", top / "configs")
    write(cli, "rl-old", tiny_profile(rpm_repo))
    write(cli, "rl-latest", tiny_profile(rpm_repo, both))
    cli.ok("build", "rl-old")
    cli.ok("lock", "rl-old", "-o", str(configs(cli) / "old.lock"))
    return cli


def configs(cli: CLI) -> Path:
    assert cli.configs is not None
    return cli.configs


def write(cli: CLI, name: str, text: str) -> None:
    (configs(cli) / f"{name}.yaml").write_text(text)


def images_of(cli: CLI, profile: str) -> list[dict[str, object]]:
    return [row for row in json.loads(cli.ok("images", "--json").out) if row["profile"] == profile]


def test_lock_lists_what_the_images_rpmdb_lists(locker: CLI, tmp_path: Path) -> None:
    lock = yaml.safe_load((configs(locker) / "old.lock").read_text())
    (image,) = images_of(locker, "rl-old")
    assert (lock["family"], lock["profile"], lock["image"], lock["distro"], lock["release"]) == (
        "rpm", "rl-old", image["key"], "tinydistro", "1")
    assert lock["archive_date"] is None and lock["mirror"].startswith("file://")
    assert {"name": "tinydistro-greeting", "epoch": 0, "version": "1", "release": "1", "arch": "noarch"} in lock[
        "packages"]
    # The host's rpm on a copy of the top layer's database (rpm would write its lock file beside the store's).
    top = Path(str(image["layers"][-1]["path"])) / "diff" / "var" / "lib" / "rpm"  # type: ignore[index]
    shutil.copytree(top, tmp_path / "rpm")
    query = subprocess.run(["rpm", "-qa", "--dbpath", str(tmp_path / "rpm"), "--qf",
                            "%{NAME} %{EPOCHNUM} %{VERSION} %{RELEASE} %{ARCH}\\n"],
                           capture_output=True, text=True, check=True,
                           env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    rows = sorted(line for line in query.stdout.splitlines() if not line.startswith("gpg-pubkey "))
    assert rows == sorted(f"{p['name']} {p['epoch']} {p['version']} {p['release']} {p['arch']}"
                          for p in lock["packages"])


def test_a_build_from_the_lock_installs_the_locked_version_though_a_newer_exists(locker: CLI) -> None:
    write(locker, "rl-locked", (configs(locker) / "rl-latest.yaml").read_text() + "lock: old.lock\n")
    assert locker.ok("run", "rl-latest", "--", "cat", GREETING_FILE).out.strip() == GREETING_2  # the newest
    assert locker.ok("run", "rl-locked", "--", "cat", GREETING_FILE).out.strip() == GREETING
    (image,) = images_of(locker, "rl-locked")
    assert [layer["kind"] for layer in image["layers"]] == ["bootstrap", "packages"]  # type: ignore[attr-defined]
    relocked = json.loads(locker.ok("lock", "rl-locked", "--json").out)
    assert relocked["packages"] == yaml.safe_load((configs(locker) / "old.lock").read_text())["packages"]
    newest = json.loads(locker.ok("lock", "rl-latest", "--json").out)
    check([newest], documented("#### `lock --json` of an RPM-family image"))
    assert {"name": "tinydistro-greeting", "epoch": 1, "version": "2", "release": "1", "arch": "noarch"} in newest[
        "packages"]
    assert f"image {image['key']}" in locker.ok("build", "rl-locked").out  # the same lock, the same image


def test_an_image_that_differs_from_its_lock_is_refused_and_not_kept(locker: CLI) -> None:
    lock = configs(locker) / "old.lock"
    lines = [line for line in lock.read_text().splitlines(keepends=True) if "tinydistro-greeting" not in line]
    assert len(lines) == len(lock.read_text().splitlines()) - 1
    (configs(locker) / "short.lock").write_text("".join(lines))
    # tinydistro-hello needs a greeting: dnf takes the newest, which the lock does not have.
    write(locker, "rl-short", (configs(locker) / "rl-latest.yaml").read_text() + "lock: short.lock\n")
    result = locker("build", "rl-short")
    assert result.code == 125, str(result)
    assert ("the image of rl-short does not match" in result.err and "1 package installed but not locked: "
            "tinydistro-greeting-1:2-1.noarch; no image was kept" in result.err)
    assert images_of(locker, "rl-short") == []


def test_a_locked_version_the_repositories_lack_is_one_line_and_no_image(locker: CLI) -> None:
    text = (configs(locker) / "old.lock").read_text()
    old = "{name: tinydistro-greeting, epoch: 0, version: '1', release: '1'"
    assert old in text
    (configs(locker) / "gone.lock").write_text(text.replace(old, old.replace("'1', release", "'3', release")))
    write(locker, "rl-gone", (configs(locker) / "rl-latest.yaml").read_text() + "lock: gone.lock\n")
    result = locker("build", "rl-gone")
    assert result.code == 125, str(result)
    error, hint = result.err.strip().split("\n")[-2:]
    assert error == ("sandboxmgr: error: the repositories of rl-gone lack 1 pinned version: "
                     f"tinydistro-greeting-0:3-1.noarch (locked in {configs(locker) / 'gone.lock'})")
    assert hint.startswith("hint: point 'repositories:' at a repository that still holds these versions")
    assert images_of(locker, "rl-gone") == []


def test_recreate_pins_the_versions_rpm_qa_and_dnf_list_name(locker: CLI, tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text("It breaks.\n\n$ rpm -qa\ntinydistro-greeting-0:1-1.noarch\ngpg-pubkey-a3b98d03-6b0d321d\n"
                      "$ dnf list installed\nInstalled Packages\n"
                      "tinydistro-hello.noarch      1-1      @tiny\ntinydistro-busybox.x86_64    7-1      @tiny\n")
    profile = tmp_path / "bug1.yaml"
    result = locker("recreate", str(report), "-p", "rl-latest", "--as", "bug1", "-o", str(profile))
    assert result.code == 0, str(result)
    assert "the repositories lack 1 named version: tinydistro-busybox-0:7-1.x86_64" in result.out
    assert "bug1: image " in result.out and "2 versions pinned" in result.out
    assert "# The repositories lack tinydistro-busybox-0:7-1.x86_64: not pinned." in profile.read_text()
    assert locker.ok("run", str(profile), "--", "cat", GREETING_FILE).out.strip() == GREETING


@pytest.mark.parametrize("plant,problem", [
    # Root inside a build step is hostile: a symlink to a host file, garbage, a view for the table.
    ("rm /var/lib/rpm/rpmdb.sqlite && ln -s /etc/shadow /var/lib/rpm/rpmdb.sqlite", "through a symlink"),
    ("head -c 65536 /usr/bin/busybox > /var/lib/rpm/rpmdb.sqlite", "the rpmdb cannot be read"),
    ("echo unfinished > /var/lib/rpm/rpmdb.sqlite-wal", "has writes not yet in it"),
])
def test_a_build_step_that_plants_a_hostile_rpmdb_makes_lock_one_line(locker: CLI, rpm_repo: RpmRepo, plant: str,
                                                                       problem: str) -> None:
    name = f"rl-plant-{hashlib.sha256(plant.encode()).hexdigest()[:8]}"
    write(locker, name, tiny_profile(rpm_repo) + f"setup:\n  - {json.dumps(plant)}\n")
    result = locker("lock", name)
    assert result.code != 0 and "Traceback" not in result.err, str(result)
    error, hint = result.err.strip().split("\n")[-2:]
    assert error.startswith("sandboxmgr: error: ") and problem in error and hint.startswith("hint: "), str(result)

