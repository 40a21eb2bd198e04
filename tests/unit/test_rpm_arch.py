"""Foreign architectures, the RPM family's pure logic: a profile's architecture names (RPM's, and
Debian's taken as RPM's) and the host dnf's command line (``--forcearch`` for another one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxmgr import distros, identity
from sandboxmgr.families.rpm import host_dnf_argv
from sandboxmgr.profile import Profile, ProfileRegistry

NATIVE = os.uname().machine
FOREIGN = "x86_64" if NATIVE == "aarch64" else "aarch64"
TINY = ("distro: tinydistro\nrelease: '1'\n{arch}bootstrap: {{method: dnf, include: [tiny-release]}}\n"
        "packages: [tiny-hello]\nrepositories: [{{name: r, baseurl: 'file:///srv/r', gpgcheck: false}}]\n")


def load(tmp_path: Path, arch: str | None, name: str = "p") -> Profile:
    (tmp_path / f"{name}.yaml").write_text(TINY.format(arch=f"arch: {arch}\n" if arch else ""))
    return ProfileRegistry([tmp_path]).load(name)


@pytest.mark.parametrize(("spelled", "rpm"), [
    ("arm64", "aarch64"), ("aarch64", "aarch64"), ("amd64", "x86_64"), ("x86_64", "x86_64"),
    ("ppc64el", "ppc64le"), ("armhf", "armv7hl"), ("s390x", "s390x"), ("riscv64", "riscv64")])
def test_an_rpm_profile_takes_debians_names_as_rpms(tmp_path: Path, spelled: str, rpm: str) -> None:
    assert load(tmp_path, spelled).arch == rpm


def test_a_debian_profile_takes_the_kernels_names_as_debians(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text("distro: debian\nrelease: bookworm\narch: aarch64\n")
    assert ProfileRegistry([tmp_path]).load("d").arch == "arm64"
    debian = distros.get("debian", None)
    assert debian is not None and debian.arch_name("x86_64") == "amd64"


def test_arm64_and_aarch64_make_the_same_layers(tmp_path: Path) -> None:
    debian_name = identity.layers(load(tmp_path, "arm64", "a"))
    rpm_name = identity.layers(load(tmp_path, "aarch64", "b"))
    assert [layer.key for layer in debian_name] == [layer.key for layer in rpm_name]
    assert identity.layers(load(tmp_path, None, "c"))[0].key != rpm_name[0].key  # the host's arch: another


def test_the_host_dnf_forces_a_foreign_architecture_only(tmp_path: Path) -> None:
    work = tmp_path / "work"
    foreign = host_dnf_argv(load(tmp_path, FOREIGN, "f"), tmp_path / "root", work, keepcache=True)
    assert foreign[0] == "dnf" and foreign.count(f"--forcearch={FOREIGN}") == 1
    assert f"--installroot={tmp_path / 'root'}" in foreign and "--setopt=keepcache=True" in foreign
    assert "--noplugins" in foreign and f"--config={work / 'dnf.conf'}" in foreign
    for native in (load(tmp_path, None, "n"), load(tmp_path, NATIVE, "m")):
        argv = host_dnf_argv(native, tmp_path / "root", work, keepcache=False)
        assert not [a for a in argv if a.startswith("--forcearch")], argv
        # Otherwise the same command line.
        assert argv == [a.replace("keepcache=True", "keepcache=False") for a in foreign
                        if not a.startswith("--forcearch")], argv


def test_a_repository_without_the_architectures_builds_is_one_line_and_a_hint(tmp_path: Path) -> None:
    from sandboxmgr.families.rpm import explain_failure

    profile = load(tmp_path, FOREIGN)
    log = (" Problem: conflicting requests\n"
           f"  - package tiny-shell-1-1.{NATIVE} does not have a compatible architecture\n"
           "  - package \x1b[2Jevil-1-1 does not have a compatible architecture\n")
    failure = explain_failure(log, profile, tmp_path / "build.log", "bootstrapping", ["tiny-shell"])
    assert failure.message == f"the repositories of p offer no {FOREIGN} build, only tiny-shell-1-1.{NATIVE}"
    assert failure.hint is not None and f"at the {FOREIGN} repository" in failure.hint
    assert str(tmp_path / "build.log") in failure.hint and "\x1b" not in failure.message + failure.hint


def test_forcearch_in_extra_args_is_refused_for_arch(tmp_path: Path) -> None:
    from sandboxmgr.errors import ProfileError

    (tmp_path / "x.yaml").write_text(TINY.format(arch="").replace(
        "include: [tiny-release]", "include: [tiny-release], extra_args: ['--forcearch=s390x']"))
    with pytest.raises(ProfileError) as raised:
        ProfileRegistry([tmp_path]).load("x")
    assert raised.value.message.endswith("bootstrap.extra_args may not name --forcearch")
    assert raised.value.hint is not None and "'arch:'" in raised.value.hint
