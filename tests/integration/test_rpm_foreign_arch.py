"""Foreign architectures, the RPM family: Tiny Distro for aarch64 (tests/rpmarch.py: Debian's arm64
busybox in the tests' own signed repository), built with the host's ``dnf --forcearch=aarch64``
and run through qemu-user's binfmt_misc handler (README, "Foreign architectures"). Its busybox
package's %post runs at install, in the build, as aarch64 code. Fedora's own aarch64 release is
tested only where Fedora's mirrors answer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, DEBIAN_KEYRING, DEBIAN_MIRROR, need_fedora_mirrors, need_mirror
from tests.rootless import OrdinaryUser
from tests.rpmarch import (
    EM_AARCH64,
    SCRIPTLET_RECORD,
    SETUP_RECORD,
    add_aarch64,
    elf_machine,
    fetch_arm64_busybox,
    need_aarch64_handler,
    tiny_aarch64,
)
from tests.rpmrepo import GREETING, RpmRepo, build_repo, tiny_profile

pytestmark = [pytest.mark.root, pytest.mark.network]

@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory, rpm_repo: RpmRepo) -> CLI:
    return tiny_aarch64(rpm_repo, tmp_path_factory.mktemp("tiny-aarch64"))


def images(cli: CLI) -> dict[str, dict[str, Any]]:
    return {i["profile"]: i for i in json.loads(cli.ok("images", "--json").out)}


def test_an_aarch64_rpm_image_runs_aarch64_programs(arm: CLI) -> None:
    assert arm.ok("run", "tiny-arm64", "--", "uname", "-m").out == "aarch64\n"
    assert arm.ok("run", "tiny-arm64", "--", "tiny-hello").out == GREETING + "\n"
    # Nothing of qemu inside: the F flag's interpreter is the host's.
    assert arm.ok("run", "tiny-arm64", "--", "sh", "-c", "ls /usr/bin/qemu-* /usr/libexec/qemu-binfmt "
                                                        "2>/dev/null | wc -l").out.strip() == "0"


def test_the_scriptlets_and_the_setup_ran_as_aarch64_code(arm: CLI) -> None:
    # %post ran in the bootstrap, by the host's rpm, chrooted: the root's shell is aarch64 code.
    assert arm.ok("run", "tiny-arm64", "--", "cat", SCRIPTLET_RECORD, SETUP_RECORD).out == "aarch64\naarch64\n"


def test_the_image_holds_aarch64_packages_and_programs(arm: CLI) -> None:
    image = images(arm)["tiny-arm64"]
    assert image["arch"] == "aarch64"
    # The rpmdb, read on the host (rpmdb.py, through lock): busybox is the aarch64 build.
    locked = json.loads(arm.ok("lock", "tiny-arm64", "--json").out)
    assert locked["arch"] == "aarch64"
    assert {p["name"]: p["arch"] for p in locked["packages"]} == {
        "tinydistro-busybox": "aarch64", "tinydistro-filesystem": "noarch", "tinydistro-greeting": "noarch",
        "tinydistro-hello": "noarch", "tinydistro-release": "noarch"}
    (busybox,) = [Path(str(layer["path"])) / "diff/usr/bin/busybox" for layer in image["layers"]
                  if (Path(str(layer["path"])) / "diff/usr/bin/busybox").is_file()]
    assert elf_machine(busybox) == EM_AARCH64


def test_arm64_and_aarch64_are_one_image_and_another_than_x86_64s(arm: CLI, rpm_repo: RpmRepo) -> None:
    arm.ok("build", "tiny-aarch64")
    configs = Path(str(images(arm)["tiny-arm64"]["profile_path"])).parent
    (configs / "tiny-native.yaml").write_text(tiny_profile(rpm_repo) + f"setup: ['uname -m > {SETUP_RECORD}']\n")
    arm.ok("build", "tiny-native")
    layers = {name: [layer["path"] for layer in image["layers"]] for name, image in images(arm).items()}
    assert layers["tiny-aarch64"] == layers["tiny-arm64"]  # the same layers (an image's key holds its profile's name)
    assert not set(layers["tiny-native"]) & set(layers["tiny-arm64"])
    found = images(arm)
    assert (found["tiny-native"]["arch"], found["tiny-aarch64"]["arch"]) == ("x86_64", "aarch64")
    assert arm.ok("run", "tiny-native", "--", "cat", SETUP_RECORD).out == "x86_64\n"


def test_a_matrix_runs_one_project_on_x86_64_and_aarch64_and_the_doctor_is_content(arm: CLI, rpm_repo: RpmRepo,
                                                                                   tmp_path: Path) -> None:
    configs = Path(str(images(arm)["tiny-arm64"]["profile_path"])).parent
    (configs / "tiny-here.yaml").write_text(tiny_profile(rpm_repo))
    (tmp_path / "sandboxmgr.yaml").write_text("profiles: [tiny-here, tiny-arm64]\ncommand: uname -m\n")
    result = subprocess.run(arm.argv("matrix", "-C", str(tmp_path), "--json"), capture_output=True, text=True,
                            timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    found = {r["name"]: (r["status"], Path(r["log"]).read_text()) for r in json.loads(result.stdout)}
    assert found == {"tiny-here": ("passed", f"{rpm_repo.arch}\n"), "tiny-arm64": ("passed", "aarch64\n")}
    findings = json.loads(arm("doctor", "--json").out)
    assert not [f for f in findings if f["kind"] == "binfmt"], findings


def test_a_lock_of_the_aarch64_image_builds_it_again(arm: CLI, tmp_path: Path) -> None:
    lock = tmp_path / "tiny.lock"
    arm.ok("lock", "tiny-arm64", "-o", str(lock))
    profile = Path(str(images(arm)["tiny-arm64"]["profile_path"]))
    pinned = profile.parent / "tiny-locked.yaml"
    pinned.write_text(profile.read_text() + f"lock: {lock}\n")
    arm.ok("build", "tiny-locked")
    assert arm.ok("run", "tiny-locked", "--", "sh", "-c", f"uname -m; cat {SCRIPTLET_RECORD}").out \
        == "aarch64\naarch64\n"


def test_a_repository_without_aarch64_builds_is_one_line(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    need_aarch64_handler()
    (tmp_path / "configs").mkdir()
    # The x86_64 Tiny Distro: its busybox has no aarch64 build.
    (tmp_path / "configs" / "wrong.yaml").write_text(tiny_profile(rpm_repo) + "arch: aarch64\n")
    refused = CLI(tmp_path / "store", tmp_path / "configs")("build", "wrong")
    assert refused.code == 125, str(refused)
    errors = [line for line in refused.err.splitlines() if not line.startswith("[")]
    assert errors[0] == f"sandboxmgr: error: the repositories of wrong offer no aarch64 build, only " \
                        f"tinydistro-busybox-1-1.{rpm_repo.arch}", str(refused)
    assert errors[1].startswith("hint: point each baseurl in ") and len(errors) == 2, str(refused)


def test_an_ordinary_user_builds_and_runs_it_rootless(rootless_user: OrdinaryUser, rpm_repo: RpmRepo) -> None:
    """In the user's own namespace: the host's dnf --forcearch, the scriptlet through qemu-user."""
    need_aarch64_handler()
    need_mirror(DEBIAN_MIRROR, "bookworm")
    user, work = rootless_user, rootless_user.home / "rpmarch"
    (work / "base").mkdir(parents=True)
    repo = build_repo(work / "base")  # the user's own: the session's is in root's tmp
    arm = add_aarch64(repo, fetch_arm64_busybox(DEBIAN_MIRROR, DEBIAN_KEYRING, work / "busybox"), work / "arm")
    for top, dirs, files in os.walk(work):
        for name in [top, *(os.path.join(top, entry) for entry in (*dirs, *files))]:
            os.lchown(name, user.uid, user.gid)
    user.profiles.mkdir(parents=True, exist_ok=True)
    for path in (user.home / ".config", user.home / ".config" / "sandboxmgr", user.profiles):
        os.chown(path, user.uid, user.gid)
    (user.profiles / "tiny-arm.yaml").write_text(tiny_profile(repo, repo_dir=arm) + "arch: arm64\n")
    user.ok("build", "tiny-arm", timeout=600)
    out = user.ok("run", "tiny-arm", "--", "sh", "-c", f"id -u; uname -m; cat {SCRIPTLET_RECORD}").out
    assert out == "0\naarch64\naarch64\n", out
    user.ok("rmi", "tiny-arm")


@pytest.mark.slow
def test_fedora_for_aarch64_builds_and_runs(tmp_path: Path) -> None:
    need_fedora_mirrors()
    need_aarch64_handler()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fedora-aarch64.yaml").write_text("extends: fedora-45\narch: aarch64\n")
    cli = CLI(tmp_path / "store", tmp_path / "configs")
    built = cli("build", "fedora-aarch64", timeout=1800)  # every scriptlet under qemu-user
    assert built.code == 0, str(built)
    assert cli.ok("run", "fedora-aarch64", "--", "uname", "-m").out == "aarch64\n"
    assert cli.ok("run", "fedora-aarch64", "--", "rpm", "-q", "--qf", "%{ARCH}\\n", "bash").out == "aarch64\n"
    assert images(cli)["fedora-aarch64"]["arch"] == "aarch64"
