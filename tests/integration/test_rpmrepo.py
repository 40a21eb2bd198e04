"""The RPM repository fixture itself: real packages, real signatures, usable by the real dnf."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.rpmrepo import RpmRepo, rpms_in, verify

pytestmark = [pytest.mark.root]

PACKAGES = {"tinydistro-filesystem", "tinydistro-busybox", "tinydistro-release", "tinydistro-greeting",
            "tinydistro-hello"}
REPO_NS = {"repo": "http://linux.duke.edu/metadata/repo"}
COMMON_NS = {"common": "http://linux.duke.edu/metadata/common"}


def primary_packages(repo: Path) -> dict[str, str]:
    """name -> arch of every package listed in the repository's primary metadata."""
    repomd = ET.parse(repo / "repodata" / "repomd.xml").getroot()
    href = None
    for data in repomd.findall("repo:data", REPO_NS):
        if data.get("type") == "primary":
            location = data.find("repo:location", REPO_NS)
            assert location is not None
            href = location.get("href")
    assert href is not None, "repomd.xml has no primary data"
    with gzip.open(repo / href) as handle:
        primary = ET.parse(handle).getroot()
    packages = {}
    for package in primary.findall("common:package", COMMON_NS):
        name, arch = package.findtext("common:name", namespaces=COMMON_NS), package.findtext(
            "common:arch", namespaces=COMMON_NS)
        location = package.find("common:location", COMMON_NS)
        assert name is not None and arch is not None and location is not None
        assert (repo / str(location.get("href"))).is_file()
        packages[name] = arch
    return packages


def test_every_repository_lists_the_five_packages(rpm_repo: RpmRepo) -> None:
    expected = {name: "noarch" for name in PACKAGES} | {"tinydistro-busybox": rpm_repo.arch}
    for repo in (rpm_repo.signed, rpm_repo.unsigned, rpm_repo.other_signed):
        assert primary_packages(repo) == expected, repo
        assert rpm_repo.baseurl(repo) == f"file://{repo.resolve()}"


def test_signatures_verify_with_key_and_only_with_key(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    def verdicts(name: str, repo: Path, key: Path | None) -> set[bool]:
        return set(verify(tmp_path, name, rpms_in(repo), key).values())

    assert "BEGIN PGP PUBLIC KEY BLOCK" in rpm_repo.key.read_text()
    assert rpm_repo.key.read_text() != rpm_repo.other_key.read_text()
    assert verdicts("signed", rpm_repo.signed, rpm_repo.key) == {True}
    assert verdicts("signed-no-key", rpm_repo.signed, None) == {False}
    assert verdicts("signed-other-key", rpm_repo.signed, rpm_repo.other_key) == {False}
    assert verdicts("unsigned", rpm_repo.unsigned, rpm_repo.key) == {False}
    assert verdicts("other-signed", rpm_repo.other_signed, rpm_repo.key) == {False}
    assert verdicts("other-signed-other-key", rpm_repo.other_signed, rpm_repo.other_key) == {True}


def dnf_install(rpm_repo: RpmRepo, repo: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    """dnf --installroot, the way an image builder runs it, with the rpmdb at /var/lib/rpm."""
    if shutil.which("dnf") is None:
        missing("dnf is not installed (make deps installs it)")
    for name in ("root", "repos.d", "cache", "home"):
        (scratch / name).mkdir()
    # Debian's rpm sets %_dbpath to ~/.rpmdb: without this, the image's rpmdb is root/root/.rpmdb.
    (scratch / "home" / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    conf = scratch / "dnf.conf"
    conf.write_text(f"[main]\ngpgcheck=1\n\n[tiny]\nname=Tiny Distro\nbaseurl={rpm_repo.baseurl(repo)}\n"
                    f"gpgcheck=1\ngpgkey=file://{rpm_repo.key}\n")
    argv = ["dnf", "-y", f"--installroot={scratch / 'root'}", "--releasever=1", f"--config={conf}",
            f"--setopt=reposdir={scratch / 'repos.d'}", "--noplugins", f"--setopt=cachedir={scratch / 'cache'}",
            "--setopt=install_weak_deps=False", "--setopt=tsflags=nodocs",
            "install", "tinydistro-release", "tinydistro-busybox", "tinydistro-hello"]
    env = {**os.environ, "HOME": str(scratch / "home"), "LC_ALL": "C"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_dnf_installs_from_signed_and_refuses_the_others(rpm_repo: RpmRepo, tmp_path: Path) -> None:
    (tmp_path / "signed").mkdir()
    good = dnf_install(rpm_repo, rpm_repo.signed, tmp_path / "signed")
    assert good.returncode == 0, good.stderr
    root = tmp_path / "signed" / "root"
    assert 'PRETTY_NAME="Tiny Distro 1 (Test)"' in (root / "etc" / "os-release").read_text()
    assert (root / "usr" / "bin" / "tiny-hello").is_file()
    assert (root / "bin").readlink() == Path("usr/bin")
    assert (root / "var" / "lib" / "rpm" / "rpmdb.sqlite").is_file()
    assert not (root / "root" / ".rpmdb").exists()

    (tmp_path / "unsigned").mkdir()
    unsigned = dnf_install(rpm_repo, rpm_repo.unsigned, tmp_path / "unsigned")
    assert unsigned.returncode == 1
    assert "Package tinydistro-hello-1-1.noarch.rpm is not signed" in unsigned.stderr
    assert "Error: GPG check FAILED" in unsigned.stderr

    (tmp_path / "other").mkdir()
    other = dnf_install(rpm_repo, rpm_repo.other_signed, tmp_path / "other")
    assert other.returncode == 1
    assert "Public key for tinydistro-hello-1-1.noarch.rpm is not installed" in other.stderr
    assert "Import of key(s) didn't help, wrong key(s)?" in other.stdout
    assert "Error: GPG check FAILED" in other.stderr
    assert not (tmp_path / "other" / "root" / "usr" / "bin" / "tiny-hello").exists()
