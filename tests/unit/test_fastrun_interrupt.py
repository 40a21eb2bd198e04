"""Ctrl-C while the `sandboxmgr` entry point is still starting: exit 130 and one line, as
the full CLI has it, never a traceback (the fast path's imports take tens of ms)."""

from __future__ import annotations

import subprocess
import sys

INTERRUPTED_AT = """
import sys
from sandboxmgr import fastrun

def interrupted(argv):
    raise KeyboardInterrupt  # where a Ctrl-C lands while the fast path imports its modules

fastrun.try_run = interrupted
sys.argv = ["sandboxmgr", "run", "debian", "true"]
fastrun.main()
"""


def test_ctrl_c_while_the_entry_point_starts_is_exit_130_and_one_line() -> None:
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_AT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "\nsandboxmgr: interrupted\n"
    assert proc.stdout == ""
