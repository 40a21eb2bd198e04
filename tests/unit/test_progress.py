"""Progress with totals: the package tools' lines become n/N counts with bytes, and the
status line shows counts on a terminal and plain phase lines off one (issue 12)."""

from __future__ import annotations

import io
import os
import sys

import pytest

from sandboxmgr import ui
from sandboxmgr.builders.pkgprogress import AptProgress, BootstrapProgress, DnfProgress, StepOutput, size_bytes
from sandboxmgr.progress import Live

# What apt-get install and dpkg print in a build step (C locale, stdout not a terminal).
APT_INSTALL = """\
Reading package lists...
Building dependency tree...
The following NEW packages will be installed:
  file libmagic-mgc libmagic1 make patch
0 upgraded, 3 newly installed, 0 to remove and 0 not upgraded.
Need to get 975 kB of archives.
After this operation, 9216 kB of additional disk space will be used.
Get:1 http://deb.debian.org/debian bookworm/main amd64 libmagic-mgc amd64 1:5.44-3 [305 kB]
Get:2 http://deb.debian.org/debian bookworm/main amd64 libmagic1 amd64 1:5.44-3 [104 kB]
Get:3 http://deb.debian.org/debian bookworm/main amd64 make amd64 4.3-4.1 [566 kB]
Fetched 975 kB in 0s (22.3 MB/s)
Selecting previously unselected package libmagic-mgc.
Preparing to unpack .../libmagic-mgc_1%3a5.44-3_amd64.deb ...
Unpacking libmagic-mgc (1:5.44-3) ...
Unpacking libmagic1:amd64 (1:5.44-3) ...
Unpacking make (4.3-4.1) ...
Setting up libmagic-mgc (1:5.44-3) ...
Setting up libmagic1:amd64 (1:5.44-3) ...
Setting up make (4.3-4.1) ...
Processing triggers for libc-bin (2.36-9+deb12u14) ...
"""


def feed(parser: object, text: str) -> None:
    for line in text.splitlines():
        parser(line)  # type: ignore[operator]


def test_apt_lines_become_counts_with_bytes_and_one_line_per_phase() -> None:
    said: list[str] = []
    feed(AptProgress(said.append, "packages"), APT_INSTALL)
    phases = [m for m in said if not isinstance(m, Live)]
    live = [m for m in said if isinstance(m, Live)]
    assert phases == ["packages: downloading 3 packages (975.0KB)", "packages: installing 3 packages"]
    assert live == [
        "packages: downloading 1/3, 305.0KB/975.0KB",
        "packages: downloading 2/3, 409.0KB/975.0KB",
        "packages: downloading 3/3, 975.0KB/975.0KB",
        "packages: unpacking 1/3 libmagic-mgc",
        "packages: unpacking 2/3 libmagic1",
        "packages: unpacking 3/3 make",
        "packages: setting up 1/3 libmagic-mgc",
        "packages: setting up 2/3 libmagic1",
        "packages: setting up 3/3 make",
        "packages: processing triggers for libc-bin",
    ]


def test_apt_with_packages_in_the_cache_counts_only_the_bytes_it_downloads() -> None:
    said: list[str] = []
    parser = AptProgress(said.append, "packages")
    feed(parser, "1 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.\n"
                 "Need to get 1.5 MB/29.7 MB of archives.\n"
                 "Get:1 http://deb.debian.org/debian bookworm/main amd64 bash amd64 5.2 [1500 kB]\n")
    assert said == ["packages: downloading 1.5MB of 2 packages (28.2MB in the cache)",
                    "packages: downloading 1, 1.5MB/1.5MB"]
    said.clear()
    feed(parser, "0 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.\n"
                 "Need to get 0 B/975 kB of archives.\n")
    assert said == ["packages: 1 package, all in the cache"]


def test_a_new_apt_run_starts_a_new_count() -> None:
    # mmdebstrap downloads the essential packages with one apt run and installs the rest
    # with another; dpkg's lines in between count against the first.
    said: list[str] = []
    parser = AptProgress(said.append, "bootstrap")
    feed(parser, "0 upgraded, 69 newly installed, 0 to remove and 0 not upgraded.\nUnpacking bash (5.2) ...\n"
                 "0 upgraded, 27 newly installed, 0 to remove and 0 not upgraded.\nUnpacking apt (2.6.1) ...\n")
    assert [m for m in said if isinstance(m, Live)] == ["bootstrap: unpacking 1/69 bash",
                                                        "bootstrap: unpacking 1/27 apt"]


def test_mmdebstraps_hook_commands_and_skips_are_not_shown() -> None:
    said: list[str] = []
    feed(BootstrapProgress(said.append), """\
I: chroot architecture amd64 is equal to the host's architecture
I: finding correct signed-by value...
I: automatically chosen format: directory
I: skipping check/empty as requested
I: running --setup-hook in shell: sh -c 'mkdir -p "$1"/etc/dpkg/dpkg.cfg.d' exec /store/tmp/layer/diff
I: running apt-get update...
I: downloading packages with apt...
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Need to get 29.7 MB of archives.
Get:1 http://deb.debian.org/debian bookworm/main amd64 gcc-12-base amd64 12.2.0-14 [37.6 kB]
I: installing essential packages...
Unpacking gcc-12-base:amd64 (12.2.0-14) ...
I: running --customize-hook in shell: sh -c 'rm -f "$1"/etc/dpkg/dpkg.cfg.d/x' exec /store/tmp/layer/diff
I: skipping cleanup/apt/lists as requested
E: something failed
""")
    assert [m for m in said if not isinstance(m, Live)] == [
        "bootstrap: running apt-get update",
        "bootstrap: downloading packages with apt",
        "bootstrap: downloading 2 packages (29.7MB)",
        "bootstrap: installing essential packages",
        "bootstrap: installing 2 packages",
    ]
    assert [m for m in said if isinstance(m, Live)] == ["bootstrap: downloading 1/2, 37.6KB/29.7MB",
                                                        "bootstrap: unpacking 1/2 gcc-12-base"]


def test_debootstraps_per_package_lines_are_live() -> None:
    said: list[str] = []
    parser = BootstrapProgress(said.append)
    feed(parser, "I: Retrieving libacl1 2.3.1-3\nI: Retrieving libc6 2.36\nI: Base system installed successfully.\n"
                 "E: Couldn't download packages: libc6\n")
    assert said == ["bootstrap: retrieving libacl1 (1)", "bootstrap: retrieving libc6 (2)",
                    "bootstrap: Base system installed successfully"]
    assert isinstance(said[0], Live) and not isinstance(said[2], Live)
    assert parser.errors == ["Couldn't download packages: libc6"]


def test_dnf4_lines_become_counts_with_bytes() -> None:
    said: list[str] = []
    feed(DnfProgress(said.append, "packages"), """\
Transaction Summary
================================================================================
Install  1 Package
Upgrade  1 Package

Total download size: 1.5 M
Downloading Packages:
(1/2): hello-2.12-1.x86_64.rpm                  1.1 MB/s |  512 kB     00:00
(2/2): bash-5.2-1.x86_64.rpm                    2.0 MB/s | 1.0 MB     00:00
Running transaction
  Installing       : bash-5.2-1.x86_64                                      1/2
  Running scriptlet: bash-5.2-1.x86_64                                      1/2
  Installing       : hello-2.12-1.x86_64                                    2/2
  Verifying        : hello-2.12-1.x86_64                                    2/2
""")
    assert said == [
        "packages: downloading 1.6MB",
        "packages: downloading 1/2, 524.3KB/1.6MB",
        "packages: downloading 2/2, 1.6MB/1.6MB",
        "packages: installing 2 packages",
        "packages: installing 1/2 bash-5.2-1.x86_64",
        "packages: running scriptlet 1/2 bash-5.2-1.x86_64",
        "packages: installing 2/2 hello-2.12-1.x86_64",
        "packages: verifying 2/2 hello-2.12-1.x86_64",
    ]
    assert [isinstance(m, Live) for m in said] == [False, True, True, False, True, True, True, True]


def test_dnf5_lines_become_counts_with_bytes() -> None:
    said: list[str] = []
    feed(DnfProgress(said.append, "bootstrap"), """\
[1/2] hello-0:2.12-1.x86_64            100% |   1.2 MiB/s |  12.0 KiB |  00m00s
[2/2] bash-0:5.2-1.x86_64              100% |   3.0 MiB/s |   1.0 MiB |  00m00s
[1/4] Verify package files             100% |   1.0 KiB/s |   2.0   B |  00m00s
[3/4] Installing bash-0:5.2-1.x86_64   100% |  10.0 MiB/s |   5.0 MiB |  00m00s
""")
    assert said == ["bootstrap: downloading 2 packages", "bootstrap: downloading 1/2, 12.3KB",
                    "bootstrap: downloading 2/2, 1.1MB", "bootstrap: installing",
                    "bootstrap: verify package files 1/4", "bootstrap: installing 3/4 bash-0:5.2-1.x86_64"]


@pytest.mark.parametrize(("text", "binary", "size"), [
    ("975 kB", False, 975_000), ("29.7 MB", False, 29_700_000), ("0 B", False, 0), ("12.0 KiB", False, 12_288),
    ("1.5 M", True, 1_572_864), ("512 kB", True, 524_288), ("nonsense", False, 0),
])
def test_sizes_as_the_tools_print_them(text: str, binary: bool, size: int) -> None:
    assert size_bytes(text, binary) == size


def drawn(tty: bool, messages: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(ui, "_columns", lambda: 80)
    line = ui.ProgressLine("deb")
    line.tty = tty
    for message in messages:
        line(message)
    line.done()
    return err.getvalue()


MESSAGES = ["packages: downloading 3 packages (975.0KB)", Live("packages: downloading 1/3, 305.0KB/975.0KB"),
            Live("packages: downloading 2/3, 409.0KB/975.0KB"), "packages: installing 3 packages",
            Live("packages: unpacking 1/3 make")]


def test_off_a_terminal_only_phase_lines_are_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert drawn(False, MESSAGES, monkeypatch) == ("[deb] packages: downloading 3 packages (975.0KB)\n"
                                                    "[deb] packages: installing 3 packages\n")


def test_on_a_terminal_the_counts_redraw_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    out = drawn(True, MESSAGES, monkeypatch)
    assert out.count("\n") == 1 and out.endswith("\n")
    assert [part for part in out.rstrip("\n").split("\r\x1b[K") if part] == [f"[deb] {m}" for m in MESSAGES]


def test_a_terminal_that_says_it_has_no_columns_still_gets_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # A new pty (and a serial console) reports 0 columns: the line must not be cut to nothing.
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((0, 0)))
    monkeypatch.setattr(err, "fileno", lambda: 2, raising=False)
    line = ui.ProgressLine("deb")
    line.tty = True
    line(Live("packages: unpacking 1/3 make"))
    assert "[deb] packages: unpacking 1/3 make" in err.getvalue()


def test_a_setup_steps_output_shows_apts_counts_or_its_latest_line() -> None:
    said: list[str] = []
    feed(StepOutput(said.append, "setup 1"), "compiling\tfoo.c\r\n\n" + APT_INSTALL.splitlines()[4] + "\n"
         "Unpacking make (4.3-4.1) ...\n")
    assert said == [Live("setup 1: compiling foo.c"), "setup 1: installing 3 packages",
                    Live("setup 1: unpacking 1/3 make")]
    assert [isinstance(m, Live) for m in said] == [True, False, True]


@pytest.mark.parametrize("tty", [True, False])
def test_a_build_steps_escape_sequences_never_reach_the_terminal(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A setup step's latest line is shown live: a hostile step prints a clipboard write
    # (OSC 52), a title change, a screen clear and a bidi override.
    said: list[str] = []
    step = StepOutput(said.append, "setup 1")
    feed(step, "\x1b]52;c;ZWNobyBvd25lZA==\x07 \x1b]0;title\x07\x1b[2J\u202egnp.exe\n"
               "Unpacking ev\x1bil (1) ...\n")
    step("Need to get 1\x1b[2J kB of archives.")
    out = drawn(tty, [*said, "setup 1: done\x1b[31m"], monkeypatch)
    # Nothing but the status line's own redraw ("\r\x1b[K") and newlines is not printable.
    assert not [c for c in out.replace("\r\x1b[K", "") if not c.isprintable() and c != "\n"], repr(out)
    assert "setup 1: done?[31m" in out


def test_a_chatty_step_redraws_its_latest_line_a_few_times_a_second_only() -> None:
    said: list[str] = []
    step = StepOutput(said.append, "setup 1")
    feed(step, "".join(f"cc -c file{i}.c\n" for i in range(10_000)))
    assert said[0] == "setup 1: cc -c file0.c" and len(said) < 100
    feed(step, APT_INSTALL)  # apt's counts are never held back
    assert len([m for m in said if "unpacking" in m]) == 3
