"""Read /proc/self/mountinfo: what is mounted where.

Removal code asks this module before it deletes anything, because a bind mount
from the same filesystem is invisible to ``st_dev`` checks and to
``rm --one-file-system``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sandboxmgr.record import record

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@record
class MountEntry:
    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    fstype: str
    source: str
    options: str
    # The file system's own options (after the source): a cgroup v1 mount's controllers.
    super_options: str = ""


def parse(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=fields[5],
                fstype=tail[0],
                source=_unescape(tail[1]) if len(tail) > 1 else "",
                super_options=tail[2] if len(tail) > 2 else "",
            )
        )
    return entries


def read(pid: int | str = "self") -> list[MountEntry]:
    return parse(Path(f"/proc/{pid}/mountinfo").read_text())


def mount_points(pid: int | str = "self") -> list[str]:
    return [entry.mount_point for entry in read(pid)]


def is_under(path: str, top: str) -> bool:
    top = top.rstrip("/") or "/"
    return path == top or path.startswith(top + "/") or top == "/"


def mounts_under(top: str | Path, pid: int | str = "self") -> list[str]:
    """Mount points at or below ``top`` (its real path), deepest first."""
    real = os.path.realpath(top)
    found = {point for point in mount_points(pid) if is_under(point, real)}
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)
