"""Named sandboxes for the entry bench: one kept running (``start``), so that ``exec`` joins it,
and one left stopped, so that ``exec`` starts it, joins it and stops it again.

Each measurement checks that it measured the path its row names: the running sandbox's PID 1
must be the same process after every ``exec`` (had it stopped, the next ``exec`` would start it
and be the stopped path under the running path's name), and the stopped sandbox must read as
stopped before every ``exec`` (else that ``exec`` would merely join it).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from bench.common import BASE, Failed
from bench.workspace import Manager

RUNNING_SANDBOX = "bench-entry"
STOPPED_SANDBOX = "bench-entry-stopped"


def start_time(pid: int) -> int | None:
    """/proc/PID/stat's start time (field 22), so that a pid used again is not taken for the same process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def dirty_bytes() -> int:
    """The machine's dirty page cache, written but not yet on disk (/proc/meminfo's Dirty)."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    return 0


class LiveSandboxes:
    """The two named sandboxes, made by :meth:`setup` and removed by :meth:`teardown`."""

    def __init__(self, sm: Manager) -> None:
        self.sm = sm
        self.pid: int | None = None
        self.since: int | None = None
        self.dirty: list[int] = []  # /proc/meminfo's Dirty (bytes) right after each round of writes

    def inspect(self, name: str) -> dict[str, object]:
        rows = json.loads(self.sm.call("inspect", name))
        return dict(rows[0])

    def setup(self) -> None:
        """Create both sandboxes and start the running one; record its PID 1."""
        self.sm.call("-q", "create", BASE, "--name", RUNNING_SANDBOX)
        self.sm.call("-q", "create", BASE, "--name", STOPPED_SANDBOX)
        self.sm.call("-q", "start", RUNNING_SANDBOX)
        info = self.inspect(RUNNING_SANDBOX)
        if info.get("state") != "running" or not isinstance(info.get("pid"), int):
            raise Failed(f"sandboxmgr start {RUNNING_SANDBOX}: it reads as {info.get('state')!r}, not running")
        self.pid = int(str(info["pid"]))
        self.since = start_time(self.pid)

    def check_running(self) -> None:
        """After an ``exec`` into the running sandbox: its PID 1 is still the one ``start`` made."""
        if self.pid is None or self.since is None or start_time(self.pid) != self.since:
            raise Failed(f"{RUNNING_SANDBOX} stopped during the bench (PID 1 {self.pid} is gone): "
                         "its next exec would start it, not join it")

    def check_stopped(self) -> None:
        """Before an ``exec`` into the stopped sandbox: it is stopped (the last one stopped it again)."""
        state = self.inspect(STOPPED_SANDBOX).get("state")
        if state != "stopped":
            raise Failed(f"{STOPPED_SANDBOX} reads as {state!r} before its exec, not stopped: "
                         "the exec would join it")

    def write_inside(self, megabytes: int) -> Callable[[], None]:
        """A prepare step: in the running sandbox (a joined exec, untimed), remove the last round's file,
        ``sync`` (all file systems, as sync(2) does), then write ``megabytes`` MB to a file in its root,
        left unsynced: dirty pages in the sandbox's upper dir, on the store's filesystem."""
        script = (f"rm -f /root/bench-dirty.bin && sync && "
                  f"head -c {megabytes}M /dev/zero > /root/bench-dirty.bin")

        def prepare() -> None:
            self.sm.call("exec", RUNNING_SANDBOX, "--", "sh", "-c", script)
            self.check_running()
            self.dirty.append(dirty_bytes())
        return prepare

    def teardown(self) -> None:
        """Stop the running sandbox (as a user would: ``stop``, then ``rm``) and remove both, those that were made."""
        made = [name for name in (RUNNING_SANDBOX, STOPPED_SANDBOX) if name in self.sm.sandboxes()]
        if RUNNING_SANDBOX in made:
            self.sm.call("-q", "stop", RUNNING_SANDBOX)
        if made:
            self.sm.call("-q", "rm", *made)
