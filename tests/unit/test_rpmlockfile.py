"""RPM-family lock files (lockfile.py's family: rpm) and reports (rpmreports.py): both read
hostile text, bounded, with one-line errors; a locked RPM profile's bootstrap takes the lock (no root)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from sandboxmgr.builders import MissingVersions
from sandboxmgr.errors import BuildError, ProfileError, SandboxError
from sandboxmgr.families.rpm import bootstrap_packages, explain_failure
from sandboxmgr.identity import identify, lock_digest
from sandboxmgr.locations import shipped_configs_dir
from sandboxmgr.locked import load as load_locked
from sandboxmgr.locked import unchanged
from sandboxmgr.lockfile import Lock, Package, differences, dump, parse, rpm_package
from sandboxmgr.profile import ProfileRegistry
from sandboxmgr.rpmreports import parse as parse_report


def rpm(name: str, epoch: int, version: str, release: str, arch: str) -> Package:
    package = rpm_package(name, epoch, version, release, arch)
    assert package is not None
    return package


PACKAGES = (rpm("bash", 0, "5.2.26", "3.fc44", "x86_64"), rpm("perl-Errno", 1, "1.38", "512.fc44", "x86_64"),
            rpm("fedora-release", 0, "44", "1", "noarch"), rpm("kernel-core", 0, "6.9.1", "200.fc44", "x86_64"),
            rpm("kernel-core", 0, "6.9.4", "200.fc44", "x86_64"))


def a_lock(*packages: Package) -> Lock:
    return Lock(profile="f", image="0123456789abcdef0123", distro="fedora", release="44", arch="x86_64",
                mirror="https://mirrors.fedoraproject.org/metalink?repo=fedora-44", archive_date=None,
                packages=tuple(sorted(packages or PACKAGES)), family="rpm")


def test_an_rpm_lock_has_the_documented_keys_and_round_trips(tmp_path: Path) -> None:
    text = dump(a_lock())
    data = yaml.safe_load(text)
    assert list(data) == ["lock_format", "family", "profile", "image", "distro", "release", "arch", "mirror",
                          "archive_date", "packages"]
    assert data["family"] == "rpm" and data["archive_date"] is None
    assert "- {name: perl-Errno, epoch: 1, version: '1.38', release: 512.fc44, arch: x86_64}\n" in text
    assert "- {name: fedora-release, epoch: 0, version: '44', release: '1', arch: noarch}\n" in text
    assert parse(tmp_path / "x.lock", text) == a_lock()
    assert dump(parse(tmp_path / "x.lock", text)) == text


def test_pins_are_dnfs_nevras_with_an_epoch_always() -> None:
    # dnf reads a NEVRA without an epoch as any epoch (tests/adversarial/test_rpmlock_attacks.py).
    assert a_lock().pins() == ("bash-0:5.2.26-3.fc44.x86_64", "fedora-release-0:44-1.noarch",
                               "kernel-core-0:6.9.1-200.fc44.x86_64", "kernel-core-0:6.9.4-200.fc44.x86_64",
                               "perl-Errno-1:1.38-512.fc44.x86_64")
    assert "repositories:" in a_lock().snapshot_hint()


def rpm_lock_text(package: str) -> str:
    """A lock of one package (a map's text, braces added) or of the packages given in braces."""
    items = package if package.startswith("{") else f"{{{package}}}"
    return f"lock_format: 1\nfamily: rpm\npackages: [{items}]\n"


GOOD = "name: a, epoch: 0, version: '1', release: '1', arch: noarch"


@pytest.mark.parametrize("text,problem", [
    (rpm_lock_text("{name: a, version: '1', arch: noarch}"), "must be a map of name, epoch, version, release"),
    (rpm_lock_text(GOOD.replace("epoch: 0", "epoch: -1")), "packages[0].epoch -1 is not a number from 0"),
    (rpm_lock_text(GOOD.replace("epoch: 0", "epoch: '1'")), "packages[0].epoch 1 is not a number"),
    (rpm_lock_text(GOOD.replace("epoch: 0", "epoch: 1.0")), "packages[0].epoch 1.0 is not a number"),
    (rpm_lock_text(GOOD.replace("epoch: 0", "epoch: true")), "packages[0].epoch True is not a number"),
    (rpm_lock_text(GOOD.replace("epoch: 0", "epoch: 4294967296")), "epoch 4294967296 is not a number"),
    (rpm_lock_text(GOOD.replace("name: a", "name: --setopt=x")),
     "packages[0].name --setopt=x is not a valid package name"),
    (rpm_lock_text(GOOD.replace("version: '1'", "version: 1-2")), "packages[0].version 1-2 is not a valid"),
    (rpm_lock_text(GOOD.replace("release: '1'", "release: '1 x'")), "packages[0].release"),
    (rpm_lock_text(GOOD.replace("arch: noarch", "arch: x86.64")), "packages[0].arch x86.64"),
    (rpm_lock_text(f"{{{GOOD}}}, {{{GOOD}}}"), "package a-1-1.noarch is listed twice"),
    (rpm_lock_text(GOOD.replace("name: a", 'name: "a\\0b"')), "packages[0].name"),
    (rpm_lock_text(GOOD.replace("version: '1'", f"version: '{'1' * 129}'")), "packages[0].version"),
    ("lock_format: 1\nfamily: arch\npackages: []\n", "family arch is not debian or rpm"),
    ("lock_format: 1\nfamily: [rpm]\npackages: []\n", "family a list is not debian or rpm"),
])
def test_a_bad_rpm_lock_file_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse(tmp_path / "x.lock", text)
    assert caught.value.message.startswith(f"{tmp_path / 'x.lock'}: ")
    assert problem in caught.value.message and "\n" not in caught.value.message


def test_an_install_only_package_at_two_versions_is_no_duplicate_and_differences_name_nevras(tmp_path: Path) -> None:
    lock = parse(tmp_path / "x.lock", dump(a_lock()))
    assert [p.version for p in lock.packages if p.name == "kernel-core"] == ["0:6.9.1-200.fc44", "0:6.9.4-200.fc44"]
    newer = [*PACKAGES[:4], rpm("bash", 0, "5.2.27", "1.fc44", "x86_64")]
    assert differences(lock, newer) == ("1 package not installed as locked: kernel-core-6.9.4-200.fc44.x86_64; "
                                        "1 package installed but not locked: bash-5.2.27-1.fc44.x86_64")


def write_profiles(tmp_path: Path, lock_text: str) -> ProfileRegistry:
    (tmp_path / "f.lock").write_text(lock_text)
    # fedora-44's bootstrap.include is bash, coreutils and dnf; /bin/sh is a capability, no name.
    (tmp_path / "f.yaml").write_text("extends: fedora-44\nbootstrap: {include: [/bin/sh]}\npackages: [bash]\n")
    (tmp_path / "locked.yaml").write_text("extends: f\nlock: f.lock\n")
    return ProfileRegistry([shipped_configs_dir(), tmp_path])


INCLUDED = (rpm("coreutils", 0, "9.5", "1.fc44", "x86_64"), rpm("dnf", 0, "4.21", "1.fc44", "noarch"))


def test_a_locked_rpm_profile_bootstraps_exactly_the_lock_and_has_no_lock_layer(tmp_path: Path) -> None:
    registry = write_profiles(tmp_path, dump(a_lock(*PACKAGES, *INCLUDED)))
    plain, locked = registry.load("f"), registry.load("locked")
    assert bootstrap_packages(locked) == list(a_lock(*PACKAGES, *INCLUDED).pins())
    assert bootstrap_packages(plain) == ["fedora-release", "bash", "coreutils", "dnf", "/bin/sh"]
    kinds = [layer.kind for layer in identify(locked).layers]
    assert kinds == ["bootstrap", "packages"]  # the lock is the bootstrap's: no layer of its own
    # ... and an input of the bootstrap layer: a changed lock is another bootstrap.
    before, digest = identify(locked).layers[0].key, identify(locked).layers[0].step
    assert before != identify(plain).layers[0].key and digest == lock_digest(str(tmp_path / "f.lock"))
    unchanged(locked, digest)
    (tmp_path / "f.lock").write_text(dump(a_lock(*PACKAGES[:4], *INCLUDED)))
    assert identify(locked).layers[0].key != before
    # A lock changed while the bootstrap installed it: its layer is not published under the old key.
    with pytest.raises(BuildError, match=r"f\.lock changed while locked was built"):
        unchanged(locked, digest)


def test_a_lock_of_the_other_family_or_without_the_profiles_packages_is_refused(tmp_path: Path) -> None:
    registry = write_profiles(tmp_path, dump(a_lock()))
    (tmp_path / "deb.yaml").write_text("extends: debian-bookworm\narch: amd64\nlock: deb.lock\n")
    # Distro, release and arch as the profile's; the family not.
    (tmp_path / "deb.lock").write_text(dump(Lock(**{**a_lock().__dict__, "distro": "debian", "release": "bookworm",
                                                    "arch": "amd64"})))
    with pytest.raises(ProfileError, match="locks rpm-family debian bookworm amd64, but profile deb is "
                                           "debian-family debian bookworm amd64"):
        load_locked(registry.load("deb"))
    (tmp_path / "f.lock").write_text(dump(a_lock(PACKAGES[1], *INCLUDED)))  # a lock without the profile's bash
    with pytest.raises(ProfileError, match="bash of 'packages:' not in the lock"):
        load_locked(ProfileRegistry(registry.dirs).load("locked"))
    # fedora-44's bootstrap.include: the locked bootstrap would leave out what the lock lacks without a word.
    (tmp_path / "f.lock").write_text(dump(a_lock(*PACKAGES, INCLUDED[1])))
    with pytest.raises(ProfileError, match=r"coreutils of 'bootstrap\.include:' not in the lock"):
        load_locked(ProfileRegistry(registry.dirs).load("locked"))


def test_versions_the_repositories_lack_are_missing_versions_only_when_asked_for(tmp_path: Path) -> None:
    profile = write_profiles(tmp_path, dump(a_lock())).load("f")
    pins = ["bash-5.2.26-3.fc44.x86_64", "perl-Errno-1:1.38-512.fc44.x86_64"]
    log = "No match for argument: bash-5.2.26-3.fc44.x86_64\nError: Unable to find a match\n"
    failure = explain_failure(log, profile, tmp_path / "log", "bootstrapping", pins)
    assert isinstance(failure, MissingVersions) and failure.missing == [pins[0]]
    assert failure.message == "the repositories of f lack 1 pinned version: bash-5.2.26-3.fc44.x86_64"
    # A scriptlet's line naming a version nobody asked for, or a plain name: not a missing version.
    for other in ("zsh-5.9-1.fc44.x86_64", "nosuchpackage"):
        log = f"No match for argument: {other}\n"
        assert not isinstance(explain_failure(log, profile, tmp_path / "log", "x", pins), MissingVersions)


RPM_QA = """$ rpm -qa
bash-5.2.26-3.fc44.x86_64
perl-Errno-1:1.38-512.fc44.x86_64
gpg-pubkey-a15b79cc-63d04c2c
kernel-core-6.9.1-200.fc44.x86_64
kernel-core-6.9.4-200.fc44.x86_64
"""
DNF_LIST = """Installed Packages
glibc.i686                           2.39-8.fc44              @fedora
python3-a-rather-long-package-name.noarch
                                     1:3.0-2.fc44             @updates
fedora-release.noarch                44-1                     @anaconda
Available Packages
zsh.x86_64                           5.9-14.fc44              fedora
"""


def nevras(text: str) -> list[str]:
    return [p.nevra() for p in parse_report(text)]


def test_rpm_qa_and_dnf_list_installed_are_read_with_and_without_epochs() -> None:
    assert nevras(RPM_QA) == ["bash-5.2.26-3.fc44.x86_64", "kernel-core-6.9.1-200.fc44.x86_64",
                              "kernel-core-6.9.4-200.fc44.x86_64", "perl-Errno-1:1.38-512.fc44.x86_64"]
    # zsh is only available, not installed; the long name is one package, not python3 at version a-rather...
    assert nevras(DNF_LIST) == ["fedora-release-44-1.noarch", "glibc-2.39-8.fc44.i686",
                                "python3-a-rather-long-package-name-1:3.0-2.fc44.noarch"]
    assert nevras(RPM_QA + "\n" + DNF_LIST.replace("\n", "\r\n")) == sorted(nevras(RPM_QA) + nevras(DNF_LIST))
    dnf5 = "Installed packages\nbash.x86_64 5.2.26-3.fc44 <unknown>\n"
    assert nevras(dnf5) == ["bash-5.2.26-3.fc44.x86_64"]


@pytest.mark.parametrize("row", [
    "bash-5.2.26-3.fc44", "bash.x86_64", "bash-1:-3.x86_64", "bash--1:5-3.x86_64", "bash-x:5-3.x86_64",
    "bash-99999999999:5-3.x86_64", "bash-4294967296:5-3.x86_64", "bash-1e3:5-3.x86_64", "-bash-5-3.x86_64",
    "ba\0sh-5-3.x86_64", "bash-5-3.x86_64\0", "b\ufffdsh-5-3.x86_64", "bash-5-3.x86_64; rm -rf /",
    "bash-5-3.x86-64", "bash-5-3.bogusarch", "b" * 2000 + "-5-3.x86_64", "bash-\u0665-3.x86_64",
])
def test_a_row_that_is_no_version_is_not_one(row: str) -> None:
    with pytest.raises(SandboxError, match="names no installed package versions") as caught:
        parse_report(f"{row}\n")
    assert caught.value.hint is not None and "rpm -qa" in caught.value.hint


def test_a_package_at_two_versions_is_refused_but_for_install_only_ones() -> None:
    with pytest.raises(SandboxError, match=r"names bash\.x86_64 at two versions, bash-5-1\.x86_64 and "
                                           r"bash-1:5-1\.x86_64"):
        parse_report("bash-0:5-1.x86_64\nbash-1:5-1.x86_64\n")  # (bash-5-1: no epoch known, the same one)
    assert len(parse_report("bash-5-1.x86_64\nbash-5-1.x86_64\nbash-5-1.i686\n")) == 2  # multilib: two arches
    assert len(parse_report("kernel-6.1-1.x86_64\nkernel-6.2-1.x86_64\n")) == 2


def test_hostile_reports_are_bounded_and_cheap() -> None:
    with pytest.raises(SandboxError, match="more than 5000 package versions"):
        parse_report("".join(f"p{n}-1-1.noarch\n" for n in range(5001)))
    started = time.monotonic()
    for line in ("-" * 999, "a-" * 499, ".x86_64" * 142, "a.x86_64 " * 111):
        with pytest.raises(SandboxError, match="names no installed"):
            parse_report((line + "\n") * 1000)
    assert time.monotonic() - started < 5
    with pytest.raises(SandboxError, match="names no installed"):
        parse_report("a" * 1001 + "-1-1.noarch\n")  # a line over MAX_LINE is not read


def test_a_report_file_with_bytes_that_are_not_utf8_or_nul_keeps_its_good_rows(tmp_path: Path) -> None:
    from sandboxmgr.reports import read_report

    report = tmp_path / "report.txt"
    report.write_bytes(b"b\xffsh-5-3.x86_64\nzsh-5.9-1.x86_64\x00\n\x00\x00\xfe\nbash-5-3.x86_64\n")
    assert nevras(read_report(report)) == ["bash-5-3.x86_64"]
