"""Foreign architectures: the check of the host's qemu-user binfmt_misc handler (binfmt.py), as the
build's preflight, a run of a foreign image and the doctor make it - on made-up binfmt_misc
directories, never the host's registrations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxmgr import binfmt, distros
from sandboxmgr.errors import SandboxError
from sandboxmgr.profile import Profile, ProfileRegistry

# One architecture this machine does not run itself, and its handler's name.
FOREIGN, MACHINE = ("amd64", "x86_64") if os.uname().machine == "aarch64" else ("arm64", "aarch64")
NATIVE = distros.host_arch()


def binfmt_misc(tmp_path: Path, flags: str | None = "PF", enabled: bool = True, status: str = "enabled") -> Path:
    """A binfmt_misc directory as the kernel shows it, with the qemu handler of FOREIGN (None: none)."""
    root = tmp_path / "binfmt_misc"
    root.mkdir(parents=True)
    (root / "status").write_text(status + "\n")
    if flags is not None:
        (root / f"qemu-{MACHINE}").write_text(
            ("enabled\n" if enabled else "disabled\n")
            + f"interpreter /usr/libexec/qemu-binfmt/{MACHINE}-binfmt-P\nflags: {flags}\noffset 0\n"
            "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")
    return root


def test_an_enabled_handler_with_the_fix_binary_flag_runs_the_architecture(tmp_path: Path) -> None:
    assert binfmt.problem(FOREIGN, binfmt_misc(tmp_path)) is None
    assert binfmt.problem(MACHINE, binfmt_misc(tmp_path / "rpm-naming")) is None  # aarch64: RPM's name
    assert binfmt.handler_name(FOREIGN) == f"qemu-{MACHINE}"


def test_the_hosts_own_architecture_needs_no_handler(tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    assert binfmt.problem(NATIVE, empty) is None
    assert binfmt.problem(os.uname().machine, empty) is None
    assert not binfmt.is_foreign(NATIVE)
    assert binfmt.is_foreign(FOREIGN)


@pytest.mark.parametrize(("case", "said", "fix"), [
    ("no handler", f"no binfmt_misc handler runs {MACHINE} programs", f"update-binfmts --enable qemu-{MACHINE}"),
    ("without F", f"qemu-{MACHINE} lacks the F (fix-binary) flag", "qemu-user-static"),
    ("disabled", f"the binfmt_misc handler qemu-{MACHINE} is disabled", f"update-binfmts --enable qemu-{MACHINE}"),
    ("binfmt_misc off", "binfmt_misc is disabled", "echo 1 >"),
    ("not mounted", "binfmt_misc is not mounted", "install qemu-user-static and binfmt-support"),
])
def test_each_missing_piece_is_one_line_and_its_fix(tmp_path: Path, case: str, said: str, fix: str) -> None:
    root = {
        "no handler": lambda: binfmt_misc(tmp_path, flags=None),
        "without F": lambda: binfmt_misc(tmp_path, flags="P"),
        "disabled": lambda: binfmt_misc(tmp_path, enabled=False),
        "binfmt_misc off": lambda: binfmt_misc(tmp_path, status="disabled"),
        "not mounted": lambda: tmp_path / "empty",
    }[case]()
    found = binfmt.problem(FOREIGN, root)
    assert found is not None
    line, hint = found
    assert said in line and fix in hint
    with pytest.raises(SandboxError) as raised:
        binfmt.require(FOREIGN, "profile x", root)
    assert "\n" not in raised.value.message and raised.value.message.startswith(f"profile x is for {FOREIGN}")
    assert said in raised.value.message and raised.value.hint == hint


def test_an_architecture_qemu_is_not_known_for_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    found = binfmt.problem("mips64el", binfmt_misc(tmp_path))
    assert found is not None and "mips64el" in found[0] and FOREIGN in found[1]


def _profile(tmp_path: Path, text: str) -> Profile:
    (tmp_path / "p.yaml").write_text(text)
    return ProfileRegistry([tmp_path]).load("p")


def test_a_debian_profile_for_a_foreign_architecture_builds_where_the_handler_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(tmp_path, f"distro: debian\nrelease: bookworm\narch: {FOREIGN}\n")
    monkeypatch.setattr(binfmt, "BINFMT_MISC", binfmt_misc(tmp_path))
    distros.of(profile).check_arch(profile)  # no error: the handler is there, with F
    monkeypatch.setattr(binfmt, "BINFMT_MISC", binfmt_misc(tmp_path / "without", flags=None))
    with pytest.raises(SandboxError) as raised:
        distros.of(profile).check_arch(profile)
    assert raised.value.message.startswith(f"profile p is for {FOREIGN}, which this")
    assert raised.value.hint is not None and "qemu-user-static" in raised.value.hint


RPM_FOREIGN = ("distro: tinydistro\nrelease: '1'\narch: {arch}\nbootstrap: {{method: dnf}}\n"
               "packages: [tiny-release]\nrepositories: [{{name: r, baseurl: 'file:///srv/r', gpgcheck: false}}]\n")


@pytest.mark.parametrize("spelled", [MACHINE, FOREIGN], ids=["rpm-name", "debian-name"])
def test_an_rpm_profile_for_a_foreign_architecture_builds_where_the_handler_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelled: str) -> None:
    profile = _profile(tmp_path, RPM_FOREIGN.format(arch=spelled))
    assert profile.arch == MACHINE  # RPM's name, whichever the profile said
    monkeypatch.setattr(binfmt, "BINFMT_MISC", binfmt_misc(tmp_path))
    distros.of(profile).check_arch(profile)  # no error: the handler is there, with F
    monkeypatch.setattr(binfmt, "BINFMT_MISC", binfmt_misc(tmp_path / "without-f", flags="P"))
    with pytest.raises(SandboxError) as raised:
        distros.of(profile).check_arch(profile)
    assert raised.value.message.startswith(f"profile p is for {MACHINE}, which this")
    assert "lacks the F (fix-binary) flag" in raised.value.message and "\n" not in raised.value.message
    assert raised.value.hint is not None and "qemu-user-static" in raised.value.hint


def test_a_foreign_image_without_its_handler_does_not_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr.sandbox import runnable
    from sandboxmgr.store import ImageRecord

    monkeypatch.setattr(binfmt, "BINFMT_MISC", binfmt_misc(tmp_path, flags=None))
    with pytest.raises(SandboxError) as raised:
        runnable(ImageRecord("k" * 20, tmp_path, {"profile": "deb-arm", "arch": FOREIGN}))
    assert raised.value.message.startswith(f"the image of deb-arm is for {FOREIGN}")
    runnable(ImageRecord("k" * 20, tmp_path, {"profile": "deb", "arch": NATIVE}))  # native: nothing read


def test_the_doctor_names_the_missing_handler_of_the_stores_foreign_images(tmp_path: Path) -> None:
    from sandboxmgr.doctor import foreign_findings
    from sandboxmgr.store import Store

    store = Store(tmp_path / "store")
    for key, profile, arch in (("a" * 20, "deb-arm", FOREIGN), ("b" * 20, "deb", NATIVE)):
        store.publish_image(key, {"key": key, "profile": profile, "arch": arch, "layers": []})
    (finding,) = foreign_findings(store, binfmt_misc(tmp_path, flags="P"))
    assert (finding.kind, finding.what, finding.repair) == ("binfmt", f"qemu-{MACHINE}", None)
    assert "lacks the F (fix-binary) flag" in finding.detail and "deb-arm" in finding.detail
    assert "fix: " in finding.detail
    assert foreign_findings(store, binfmt_misc(tmp_path / "ok")) == []


def test_an_ubuntu_profile_for_arm64_takes_ports_where_its_base_named_the_main_archive(tmp_path: Path) -> None:
    """ubuntu-noble names archive.ubuntu.com, which carries no arm64: its arm64 child gets ports."""
    (tmp_path / "noble-arm64.yaml").write_text("extends: ubuntu-noble\narch: arm64\n")
    (tmp_path / "own-mirror.yaml").write_text(
        "extends: ubuntu-noble\narch: arm64\nbootstrap: {mirror: 'http://mirror.example/ubuntu-ports'}\n")
    from sandboxmgr.locations import shipped_configs_dir

    registry = ProfileRegistry([shipped_configs_dir(), tmp_path])
    assert registry.load("ubuntu-noble").bootstrap.mirror == "http://archive.ubuntu.com/ubuntu"
    assert registry.load("noble-arm64").bootstrap.mirror == "http://ports.ubuntu.com/ubuntu-ports"
    assert registry.load("own-mirror").bootstrap.mirror == "http://mirror.example/ubuntu-ports"


def test_doctor_says_the_binfmt_fix_and_not_that_doctor_fix_cleans_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sandboxmgr import doctor
    from sandboxmgr.cli import cli

    found = [doctor.Finding("binfmt", f"qemu-{MACHINE}", "no binfmt_misc handler ...; fix: update-binfmts ...")]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(doctor, "examine", lambda store: found)
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "doctor"], standalone_mode=False)
    assert result.return_value == 1, result.output
    assert f"binfmt  qemu-{MACHINE}" in result.output and "fix: update-binfmts" in result.output
    assert "doctor --fix" not in result.output  # --fix registers no handler


def test_debians_and_rpms_names_of_one_architecture_make_one_doctor_finding(tmp_path: Path) -> None:
    from sandboxmgr.doctor import foreign_findings
    from sandboxmgr.store import Store

    store = Store(tmp_path / "store")
    for key, profile, arch in (("a" * 20, "deb-arm", FOREIGN), ("b" * 20, "rpm-arm", MACHINE)):
        store.publish_image(key, {"key": key, "profile": profile, "arch": arch, "layers": []})
    (finding,) = foreign_findings(store, binfmt_misc(tmp_path, flags=None))
    assert finding.what == f"qemu-{MACHINE}"
    assert f"the {'/'.join(sorted((FOREIGN, MACHINE)))} images of deb-arm, rpm-arm cannot run" in finding.detail
