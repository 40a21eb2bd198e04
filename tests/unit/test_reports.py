"""A bug report's package versions (reports.py), and an image's, read from its layers
(dpkgstatus.py): both read hostile text, bounded, with one-line errors (no root needed)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sandboxmgr.dpkgstatus import archive_date, installed, parse_status
from sandboxmgr.errors import BuildError, SandboxError
from sandboxmgr.lockfile import Package
from sandboxmgr.reports import parse, read_report

REPORTBUG = """\
Package: sbm-hello
Version: 1.0
Severity: normal

Dear Maintainer, it breaks.

-- System Information:
Debian Release: 12.5
Architecture: amd64 (x86_64)

Versions of packages sbm-hello depends on:
ii  libc6  2.36-9+deb12u4
ii  debconf [debconf-2.0]  1.5.82
iU  half  1.0

sbm-hello recommends no packages.

Versions of packages sbm-hello suggests:
pn  frobnicate  <none>

-- no debconf information
"""

DPKG_L = """\
Desired=Unknown/Install/Remove/Purge/Hold
| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend
|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)
||/ Name           Version        Architecture Description
+++-==============-==============-============-=================================
ii  adduser        3.134          all          add and remove users and groups
ii  libc6:amd64    2.36-9+deb12u4 amd64        GNU C Library: Shared libraries
hi  held           2.0            amd64        a held package
rc  removed        1.0            amd64        only its configuration is left
ii  very-long-name 1.2.3-4+deb12u\u2026 amd64  dpkg -l cut this version short
"""


def test_reportbug_text_gives_the_reported_package_and_its_installed_dependencies() -> None:
    assert parse(REPORTBUG) == [Package("debconf", "", "1.5.82"), Package("libc6", "", "2.36-9+deb12u4"),
                                Package("sbm-hello", "", "1.0")]


def test_dpkg_l_gives_installed_rows_with_their_architecture() -> None:
    assert parse(DPKG_L) == [Package("adduser", "all", "3.134"), Package("held", "amd64", "2.0"),
                             Package("libc6", "amd64", "2.36-9+deb12u4")]


def test_dpkg_query_w_rows_and_mixed_text() -> None:
    text = "apt\t2.6.1\nlibc6:amd64\t2.36-9+deb12u4\nnot-installed\t\n" + REPORTBUG
    found = {p.name: p for p in parse(text)}
    assert found["apt"] == Package("apt", "", "2.6.1")
    assert found["libc6"].arch == "amd64" and "not-installed" not in found


@pytest.mark.parametrize("text,problem", [
    ("nothing here\n", "names no installed package versions"),
    ("ii  libc6  2.36\nii  libc6  2.37\n", "names libc6 at two versions, 2.36 and 2.37"),
    ("ii  libc6  2.36;reboot\n", "names no installed package versions"),
    ("ii  " + "a" * 2000 + "  1.0\n", "names no installed package versions"),  # an overlong line is skipped
    ("".join(f"ii  p{n}  1.0\n" for n in range(5001)), "more than 5000 package versions"),
])
def test_a_report_that_names_nothing_usable_is_one_line(text: str, problem: str) -> None:
    with pytest.raises(SandboxError) as caught:
        parse(text, "report.txt")
    assert caught.value.message.startswith("report.txt ") and problem in caught.value.message
    assert "\n" not in caught.value.message and caught.value.hint


def test_a_report_file_is_bounded_and_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * ((1 << 20) + 1))
    with pytest.raises(SandboxError, match="larger than 1024 KiB"):
        read_report(big)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    failed: list[str] = []
    reader = threading.Thread(target=lambda: failed.append(_error(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert failed == [f"{fifo}: not a regular file"]


def _error(path: Path) -> str:
    try:
        read_report(path)
    except SandboxError as exc:
        return exc.message
    return ""


STATUS = """\
Package: adduser
Status: install ok installed
Architecture: all
Version: 3.134
Description: add and remove users
 Package: not-a-stanza
 Version: 9

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u4
"""


def test_the_dpkg_status_gives_what_dpkg_query_w_lists() -> None:
    assert parse_status(STATUS) == [Package("adduser", "all", "3.134"), Package("libc6", "amd64", "2.36-9+deb12u4")]


def layer(tmp_path: Path, name: str, status: str | None = None) -> Path:
    diff = tmp_path / name / "diff"
    (diff / "var/lib/dpkg").mkdir(parents=True)
    if status is not None:
        (diff / "var/lib/dpkg/status").write_text(status)
    return diff


def test_the_topmost_layer_with_a_status_file_decides(tmp_path: Path) -> None:
    bottom = layer(tmp_path, "bottom", STATUS)
    middle = layer(tmp_path, "middle", STATUS.split("\n\n", maxsplit=1)[0] + "\n")
    top = layer(tmp_path, "top")
    assert [p.name for p in installed([bottom, middle, top])] == ["adduser"]
    assert [p.name for p in installed([bottom])] == ["adduser", "libc6"]
    with pytest.raises(BuildError, match="no dpkg database"):
        installed([top])


def test_a_layer_is_never_read_through_a_symlink_or_a_fifo(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text(STATUS)
    planted = tmp_path / "planted" / "diff"
    (planted / "var/lib").mkdir(parents=True)
    (planted / "var/lib/dpkg").symlink_to(tmp_path)  # a build step's link to a host directory
    os.rename(secret, tmp_path / "status")
    with pytest.raises(SandboxError, match="through a symlink in layer planted"):
        installed([planted])
    fifo_layer = layer(tmp_path, "fifo")
    os.mkfifo(fifo_layer / "var/lib/dpkg/status")
    with pytest.raises(SandboxError, match="is not a regular file in layer fifo"):
        installed([fifo_layer])


def test_the_archive_date_comes_from_the_release_file_in_apts_lists(tmp_path: Path) -> None:
    bottom = layer(tmp_path, "bottom", STATUS)
    lists = bottom / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\n\nOrigin: Debian\nDate: Sat, 10 Feb 2024 09:50:14 UTC\n")
    (lists / "other.example_dists_bookworm_InRelease").write_text("Date: Mon, 01 Jan 2024 00:00:00 UTC\n")
    assert archive_date([bottom], "http://deb.debian.org/debian/", "bookworm") == "Sat, 10 Feb 2024 09:50:14 UTC"
    assert archive_date([bottom], "http://elsewhere/debian", "bookworm") is None  # which of the two?
    (lists / "deb.debian.org_debian_dists_bookworm_InRelease").unlink()
    assert archive_date([bottom], "http://elsewhere/debian", "bookworm") == "Mon, 01 Jan 2024 00:00:00 UTC"
    assert archive_date([bottom], "http://deb.debian.org/debian", "trixie") is None


def test_recreate_writes_the_pins_and_drops_what_the_archive_lacks(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxmgr.builders import MissingVersions
    from sandboxmgr.locations import shipped_configs_dir
    from sandboxmgr.locking import recreate
    from sandboxmgr.profile import Profile, ProfileRegistry
    from sandboxmgr.store import ImageRecord

    report = tmp_path / "report.txt"
    report.write_text(REPORTBUG + "\nii  libfoo:i386  1.0  i386  another architecture\n")
    built: list[tuple[str, ...]] = []

    def build(profile: Profile) -> ImageRecord:
        built.append(profile.packages)
        if len(built) == 1:  # as apt says it, through the Debian builder
            raise MissingVersions("the archive lacks 1 pinned version: debconf=1.5.82", ["debconf=1.5.82"])
        return ImageRecord("0123", tmp_path, {})

    monkeypatch.chdir(tmp_path)
    done = recreate(ProfileRegistry([shipped_configs_dir()]), report, "debian-bookworm", None, None, build)
    assert done.path == tmp_path / "debian-bookworm-report.yaml" and done.profile.name == "debian-bookworm-report"
    assert built == [("debconf=1.5.82", "libc6=2.36-9+deb12u4", "sbm-hello=1.0"),
                     ("libc6=2.36-9+deb12u4", "sbm-hello=1.0")]
    assert (done.lacking, done.foreign) == (["debconf=1.5.82"], ["libfoo:i386=1.0"])
    text = done.path.read_text()
    assert "# The archive lacks debconf=1.5.82: not pinned.\n" in text and 'extends: "debian-bookworm"\n' in text
    # Written again by recreate: fine; a file of the user's own: never overwritten.
    recreate(ProfileRegistry([shipped_configs_dir()]), report, "debian-bookworm", None, None, build)
    (tmp_path / "mine.yaml").write_text("extends: debian-bookworm\n")
    with pytest.raises(SandboxError, match=r"mine\.yaml exists and was not made by recreate"):
        recreate(ProfileRegistry([shipped_configs_dir()]), report, "debian-bookworm", "mine", None, build)
    assert (tmp_path / "mine.yaml").read_text() == "extends: debian-bookworm\n"
