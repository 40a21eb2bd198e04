"""A distribution family the tests define, in this one file: registered through the public
registry, then built and run through the CLI like a shipped family (a new family is one
module and its profiles).

``tinybox`` makes its root from a local tar archive named by ``bootstrap.mirror``
(file:///...tar), here a busybox-static root the test packs. No mirror, no package
manager: it builds in a second and tells whether anything outside its file decides
how a family is validated, keyed, built and run.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxmgr import commands, distros
from sandboxmgr.builders import BuildContext, Builder, BuildRoot
from sandboxmgr.errors import BuildError, ProfileError
from sandboxmgr.profile import Profile
from tests.conftest import REPO, missing, need_root


class TarballBuilder(Builder):
    """The bootstrap unpacks the archive; there is nothing to install afterwards."""

    method = "tarball"

    def preflight(self, profile: Profile) -> None:
        commands.require("tar")
        distros.of(profile).check_arch(profile)

    def bootstrap(self, profile: Profile, rootfs: Path, context: BuildContext) -> None:
        rootfs.mkdir(mode=0o755)
        archive = profile.bootstrap.mirror[len("file://"):]
        context.progress(f"bootstrap: unpacking {archive}")
        commands.run(["tar", "-xf", archive, "-C", str(rootfs)], log_file=context.log_file)

    def install(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        raise BuildError(f"{profile.name}: a tarball root has no package manager", hint="drop 'packages:'")

    def finish(self, profile: Profile, root: BuildRoot, context: BuildContext) -> None:
        pass


@dataclass(frozen=True)
class Tinybox(distros.Distro):
    family: str = "tarball"
    methods: tuple[str, ...] = ("tarball",)

    def check(self, path: Path, method: str, boot: Mapping[str, Any], repositories: Sequence[object]) -> str:
        if repositories or not str(boot.get("mirror", "")).startswith("file:///"):
            raise ProfileError(f"{path}: a tarball profile names its archive in bootstrap.mirror",
                               hint="set 'bootstrap: {method: tarball, mirror: file:///PATH.tar}'")
        return ""

    def builder(self, method: str) -> Builder:
        return TarballBuilder()


def register() -> None:
    distros.register(Tinybox("tinybox"))


# The CLI in a process of its own, with the family registered first.
CLI_WITH_FAMILY = ("import sys; from tests.integration.test_family import register; register(); "
                   "from sandboxmgr.cli import main; sys.argv[0] = 'sandboxmgr'; main()")


def is_static(path: Path) -> bool:
    """Whether an ELF executable has no program interpreter (PT_INTERP): it runs in an empty root."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only; a 32-bit host skips
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def test_a_family_the_tests_define_builds_and_runs_through_the_cli(tmp_path: Path) -> None:
    need_root()
    busybox = shutil.which("busybox")
    if busybox is None or not is_static(Path(busybox)):
        missing("a static busybox is not installed (busybox-static; make deps installs it)")
    assert busybox is not None
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in ("sh", "cat", "echo"):
        os.symlink("busybox", root / "bin" / applet)
    archive = tmp_path / "tinybox.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(root), "."], check=True)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(
        f"distro: tinybox\nrelease: '1'\nbootstrap: {{method: tarball, mirror: 'file://{archive}'}}\n"
        "setup: ['echo made by a family of the tests > /greeting']\n")
    argv = [sys.executable, "-c", CLI_WITH_FAMILY, "--store", str(tmp_path / "store"), "--configs", str(configs)]
    result = subprocess.run([*argv, "run", "tiny", "--", "cat", "/greeting"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "made by a family of the tests\n"
    listed = subprocess.run([*argv, "profiles"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "tinybox" in listed.stdout
