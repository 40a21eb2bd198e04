"""package test's per-family pieces (no root): which files a profile tests, the RPM family's
commands and mounts for a profile, the leftovers' arithmetic; and the host paths the host's
dnf is shown (two repositories of a package test's profile may share a key)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxmgr.errors import SandboxError
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.mounts import BindMount
from sandboxmgr.pkgtest import DEBIAN, family_of, packages_for, unowned
from sandboxmgr.profile import Profile, ProfileRegistry
from sandboxmgr.rpmpkgtest import family
from sandboxmgr.toolroot import shown_once
from tests.conftest import missing

TINY = """\
distro: tinydistro
release: '7'
bootstrap:
  method: dnf
  include: [tinydistro-release]
repositories:
  - name: tiny
    baseurl: file://{repo}
    gpgkey: file://{key}
  - name: far
    baseurl: https://far.invalid/repo/
    gpgkey: https://far.invalid/key
packages: []
"""


def tiny(tmp_path: Path) -> Profile:
    (tmp_path / "repo").mkdir()
    (tmp_path / "key").write_text("a key\n")
    (tmp_path / "tiny.yaml").write_text(TINY.format(repo=tmp_path / "repo", key=tmp_path / "key"))
    return ProfileRegistry([shipped_configs_dir(), tmp_path]).load("tiny")


def bookworm() -> Profile:
    return ProfileRegistry([shipped_configs_dir()]).load("debian-bookworm")


def test_an_rpm_profile_is_tested_with_its_own_dnf_and_the_profiles_repositories(tmp_path: Path) -> None:
    profile = tiny(tmp_path)
    steps = family_of(profile)
    assert steps == family(profile) and steps.suffix == ".rpm" and steps.tool == "dnf"
    (repo_text,) = steps.prepare_args
    assert "[tiny]" in repo_text and f"baseurl=file://{tmp_path / 'repo'}" in repo_text and "[far]" in repo_text
    assert "gpgcheck=1" in repo_text
    # Only the file:// repository and key are shown, read-only, where the repository file names them.
    assert steps.binds == (BindMount(tmp_path / "repo", str(tmp_path / "repo"), readonly=True),
                           BindMount(tmp_path / "key", str(tmp_path / "key"), readonly=True))
    for command in (steps.install, steps.remove, steps.purge):
        assert command.split()[command.split().index("dnf") + 1] == "-y", command
        assert "--releasever=7" in command and "--setopt=reposdir=/etc/sandboxmgr/yum.repos.d" in command
    assert steps.install.endswith('install "$@"')
    # remove takes the packages alone (by the names in their headers, the real rpm's, not busybox's
    # applet); autoremove then takes what came with them.
    assert "clean_requirements_on_remove=False remove $(" in steps.remove and "/usr/bin/rpm -qp" in steps.remove
    assert steps.purge.endswith(" autoremove")
    assert steps.owned == "/usr/bin/rpm -qal" and "/var/lib/rpm" in steps.state and "/var/lib/dpkg" not in steps.state


def test_a_debian_profile_keeps_the_apt_steps() -> None:
    steps = family_of(bookworm())
    assert steps is DEBIAN and steps.suffix == ".deb" and "apt-get install" in steps.install
    assert "/var/lib/dpkg" in steps.state and steps.binds == ()


def test_the_packages_of_a_profile_are_of_its_family(tmp_path: Path) -> None:
    profile = tiny(tmp_path)
    deb = tmp_path / "x_1.0_amd64.deb"
    rpm = tmp_path / "x-1.0-1.noarch.rpm"
    deb.write_bytes(b"!<arch>\n")
    rpm.write_bytes(b"\xed\xab\xee\xdb")
    with pytest.raises(SandboxError) as refused:
        packages_for("tiny", profile, [rpm, deb], None)
    assert refused.value.message == f"tiny is a profile of the rpm family and {deb} is not a .rpm file"
    assert refused.value.hint
    with pytest.raises(SandboxError) as refused:
        packages_for("debian-12", bookworm(), [rpm], None)
    assert refused.value.message == f"debian-12 is a profile of the debian family and {rpm} is not a .deb file"
    assert packages_for("tiny", profile, [rpm], None).files == (rpm,)


def test_package_builds_results_give_their_binary_rpms(tmp_path: Path) -> None:
    profile = tiny(tmp_path)
    out = tmp_path / "out" / "tiny"
    out.mkdir(parents=True)
    for name in ("sm-1.0-1.noarch.rpm", "sm-doc-1.0-1.noarch.rpm", "sm-1.0-1.src.rpm", "build.log",
                 "build-info.json", "sm_1.0-1_amd64.deb"):
        (out / name).write_text("")
    (out / "link-1.0-1.noarch.rpm").symlink_to(out / "sm-1.0-1.noarch.rpm")
    packages = packages_for("tiny", profile, [], tmp_path / "out")
    assert [p.name for p in packages.files] == ["sm-1.0-1.noarch.rpm", "sm-doc-1.0-1.noarch.rpm"]
    assert packages.origin == out and packages.source_tree is None
    assert packages_for("tiny", profile, [], out).files == packages.files  # one profile's directory
    for name in ("sm-1.0-1.noarch.rpm", "sm-doc-1.0-1.noarch.rpm"):
        (out / name).unlink()
    with pytest.raises(SandboxError) as refused:
        packages_for("tiny", profile, [], tmp_path / "out")
    assert f"{out} holds no .rpm file for tiny" in refused.value.message


@pytest.mark.parametrize("shell", ["/bin/sh", "busybox"])
def test_the_files_left_are_the_new_ones_no_package_owns(tmp_path: Path, shell: str) -> None:
    """The leftovers' arithmetic, with the host's grep and with busybox's (Tiny Distro's)."""
    busybox = shutil.which("busybox")
    if shell == "busybox" and busybox is None:
        missing("busybox is not installed (make deps installs busybox-static)")
    argv = [str(busybox), "sh"] if shell == "busybox" else [shell]
    (tmp_path / "before").write_text("/\n/etc\n/etc/passwd\n/usr\n")
    (tmp_path / "after").write_text("/\n/etc\n/etc/passwd\n/etc/stray.conf\n/usr\n/usr/bin\n/usr/bin/tool\n/var\n")
    owned = "printf '/usr/bin\\n\\n/usr/bin/tool\\n/etc\\n'"  # an empty line too: it must not hide the rest
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin"}
    if shell == "busybox":  # busybox's own grep, sed and sort, as in Tiny Distro
        (tmp_path / "bin").mkdir()
        for applet in ("grep", "sed", "sort", "printf"):
            (tmp_path / "bin" / applet).symlink_to(str(busybox))
    proc = subprocess.run([*argv, "-c", unowned(str(tmp_path), owned)], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout) == (0, "/etc/stray.conf\n/var\n"), proc
    # Nothing left: grep prints nothing and says 1, which is not a failure to list.
    proc = subprocess.run([*argv, "-c", unowned(str(tmp_path), "printf '/etc/stray.conf\\n/var\\n/usr/bin\\n"
                                                                   "/usr/bin/tool\\n'")],
                          capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout) == (0, ""), proc
    # A list that cannot be read is a failure.
    (tmp_path / "before").unlink()
    proc = subprocess.run([*argv, "-c", unowned(str(tmp_path), owned)], capture_output=True, text=True, env=env)
    assert proc.returncode != 0, proc


def test_the_tool_root_shows_each_readable_path_once_and_none_inside_another() -> None:
    """Two repositories with one key file, a key inside its file:// repository: binding the same
    file twice (or a mount point inside a read-only bind) failed the host dnf's bootstrap."""
    key, repo = Path("/srv/tiny/keys/KEY"), Path("/srv/tiny/repo")
    assert shown_once([key, repo / "KEY", repo, key]) == [repo, key]
    assert shown_once([Path("/srv/tiny/repo-two"), repo]) == [repo, Path("/srv/tiny/repo-two")]
