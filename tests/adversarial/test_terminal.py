"""Attack 11: leaving the caller's terminal and descriptors changed.

Without -t the command gets the caller's own stdin, stdout and stderr. The probe
turns echo off, puts the terminal in raw mode, shrinks the window and sets
O_NONBLOCK on stdin and O_APPEND on stdout - all of which belong to the caller's
terminal or open files and would outlive the sandbox. After the run, every one
of them must be as it was (on a pty of the test's own, as on a real terminal;
and on pipes). With -t the command only ever had a pty of the sandbox's own.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversarial.conftest import attempts
from tests.conftest import CLI, ConcurrentBuild, Result, run_in_pty

pytestmark = [pytest.mark.adversarial, pytest.mark.root, pytest.mark.network]

IMAGE = "debian-bookworm"

# Runs on the test's pty: notes the terminal's state, runs sandboxmgr on it, notes it again.
WRAPPER = r"""
import fcntl, json, os, struct, subprocess, sys, termios
def state():
    attrs = termios.tcgetattr(0)
    return {"echo": bool(attrs[3] & termios.ECHO), "icanon": bool(attrs[3] & termios.ICANON),
            "opost": bool(attrs[1] & termios.OPOST),
            "winsize": list(struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]),
            "stdin_nonblock": bool(fcntl.fcntl(0, fcntl.F_GETFL) & os.O_NONBLOCK),
            "stdout_append": bool(fcntl.fcntl(1, fcntl.F_GETFL) & os.O_APPEND)}
fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
before = state()
code = subprocess.run(json.loads(sys.argv[1])).returncode
print("STATE " + json.dumps({"before": before, "after": state(), "code": code}))
"""


@pytest.mark.parametrize("tty", [False, True], ids=["without-t", "with-t"])
def test_the_callers_terminal_is_as_it_was_after_the_run(cli: CLI, bookworm: ConcurrentBuild, attack_dir: Path,
                                                         tty: bool) -> None:
    argv = cli.argv("run", *(["-t"] if tty else []), "-v", f"{attack_dir}:/attack:ro", IMAGE,
                    "/attack/probe", "tty-mess")
    status, output = run_in_pty([sys.executable, "-c", WRAPPER, json.dumps(argv)])
    assert status == 0, output
    line = next((line for line in output.replace("\r", "\n").splitlines() if line.startswith("STATE ")), None)
    assert line is not None, output
    report = json.loads(line[len("STATE "):])
    assert report["code"] == 0, output
    # The attack itself worked on whatever terminal the command had...
    found = attempts(Result(0, output.replace("\r", "\n"), ""))
    assert {found[k] for k in ("raw-no-echo", "window-size", "stdin-nonblock", "stdout-append")} == {"ok"}, found
    # ...and left the caller's exactly as it was.
    assert report["before"] == {"echo": True, "icanon": True, "opost": True, "winsize": [40, 100],
                                "stdin_nonblock": False, "stdout_append": False}, report
    assert report["after"] == report["before"], report


def test_status_flags_of_the_callers_pipes_are_as_they_were(cli: CLI, bookworm: ConcurrentBuild,
                                                            attack_dir: Path) -> None:
    """O_NONBLOCK on a shared stdin breaks the caller's next read (EAGAIN); O_APPEND changes
    how it writes. Both belong to the open pipe, which the caller keeps."""
    stdin_read, stdin_write = os.pipe()
    out_read, out_write = os.pipe()
    try:
        proc = subprocess.run(cli.argv("run", "-v", f"{attack_dir}:/attack:ro", IMAGE, "/attack/probe", "tty-mess"),
                              stdin=stdin_read, stdout=out_write, stderr=subprocess.PIPE, timeout=120)
        appended = fcntl.fcntl(out_write, fcntl.F_GETFL) & os.O_APPEND
        os.close(out_write)
        out_write = -1
        with os.fdopen(out_read, "rb") as pipe:
            out_read = -1
            found = attempts(Result(proc.returncode, pipe.read().decode(), ""))
        assert proc.returncode == 0, proc.stderr
        assert found["stdin-nonblock"] == "ok" and found["stdout-append"] == "ok", found
        assert not fcntl.fcntl(stdin_read, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not appended
    finally:
        for fd in (stdin_read, stdin_write, out_read, out_write):
            if fd >= 0:
                os.close(fd)
