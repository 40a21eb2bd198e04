"""The cgroup hierarchies of this machine, and the run cgroups in them.

:func:`hierarchies` finds the mounted hierarchies (v1, v2 or both) and this
process's cgroup in each; :func:`choose` picks, for each controller a run's
limits need, the hierarchy it is taken from. A run's cgroup is a directory
``sandboxmgr/<id>`` (see runcgroup.py, which makes and configures it); the
rest of this module is what any run cgroup needs, the doctor's search for
leftovers among them: its processes, killing them, removing it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandboxmgr import mountinfo
from sandboxmgr.errors import SandboxError

GROUP_DIR = "sandboxmgr"
# The sandbox's processes live one level below the cgroup that carries the limits, and
# its cgroup namespace is rooted there. Even root in a user namespace of its own (possible
# with seccomp=unconfined only) that mounts a cgroup file system reaches nothing but this
# leaf: on cgroup v1 it may write the leaf's pids.max or memory limits, and the run's
# limits, one level up, still hold; on v2 the leaf has no limit files at all.
LEAF = "sandbox"
# A run cgroup's name: <manager pid>-<its start time>-<random>.
RUN_NAME = re.compile(r"^(\d+)-(\d+)-[0-9a-f]+$")


# --- the hierarchies of this machine -------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and this process's place in it."""

    version: int  # 1 or 2
    mount: Path
    controllers: frozenset[str]  # v1: those bound to it; v2: those it offers
    own: str  # this process's cgroup in it, like /user.slice/session-1.scope
    # v2, for an ordinary user: the parent of its cgroup is delegated to it (see delegated()).
    delegated: bool = False

    @property
    def own_dir(self) -> Path:
        return self.mount / self.own.strip("/")

    @property
    def run_parent(self) -> Path:
        """Where runs' cgroups go. v1: below the caller's own cgroup. v2 forbids
        processes in a cgroup whose children use controllers (the caller's cgroup
        has at least the caller), so there: below the hierarchy's root, whose
        subtree_control is exempt, as Docker's cgroupfs driver does; for an ordinary
        user, beside its own cgroup, in the subtree delegated to it."""
        if self.delegated:
            return self.own_dir.parent / GROUP_DIR
        return (self.mount if self.version == 2 else self.own_dir) / GROUP_DIR


def _mounted_cgroups(mountinfo_text: str) -> list[tuple[str, str, Path, set[str]]]:
    """(fstype, mount root, mount point, super options) of each cgroup mount."""
    return [(entry.fstype, entry.root, Path(entry.mount_point), set(entry.super_options.split(",")))
            for entry in mountinfo.parse(mountinfo_text) if entry.fstype in ("cgroup", "cgroup2")]


def hierarchies(mountinfo_text: str | None = None, cgroup_text: str | None = None,
                sys_root: Path = Path("/")) -> list[Hierarchy]:
    """The cgroup hierarchies mounted here, each with this process's cgroup in it.

    The texts default to ``/proc/self/mountinfo`` and ``/proc/self/cgroup``;
    tests give their own (and ``sys_root``, under which mount points are read).
    """
    if mountinfo_text is None:
        mountinfo_text = Path("/proc/self/mountinfo").read_text()
    if cgroup_text is None:
        cgroup_text = Path("/proc/self/cgroup").read_text()
    mounts = _mounted_cgroups(mountinfo_text)
    result: list[Hierarchy] = []
    seen: set[Path] = set()
    for line in cgroup_text.splitlines():
        number, _, rest = line.partition(":")
        names, _, own = rest.partition(":")
        if not number or not own:
            continue
        for fstype, root, point, options in mounts:
            if point in seen:
                continue
            if number == "0" and names == "" and fstype == "cgroup2":
                mount = sys_root / point.relative_to("/")
                try:
                    offered = frozenset((mount / "cgroup.controllers").read_text().split())
                except OSError:
                    offered = frozenset()
                result.append(Hierarchy(2, mount, offered, _below(own, root)))
            elif fstype == "cgroup" and names and set(names.split(",")) <= options:
                mount = sys_root / point.relative_to("/")
                result.append(Hierarchy(1, mount, frozenset(names.split(",")), _below(own, root)))
            else:
                continue
            seen.add(point)
            break
    return result


def _below(own: str, mount_root: str) -> str:
    """``own`` relative to a mount of a sub-tree (a container's view), else as it is."""
    if mount_root not in ("", "/") and (own == mount_root or own.startswith(mount_root.rstrip("/") + "/")):
        return own[len(mount_root.rstrip("/")):] or "/"
    return own


def choose(controllers: tuple[str, ...], found: list[Hierarchy]) -> dict[Hierarchy, list[str]]:
    """Where each controller is taken from: v2 when it offers it, else its v1 hierarchy."""
    plan: dict[Hierarchy, list[str]] = {}
    for controller in controllers:
        place = next((h for h in found if h.version == 2 and controller in h.controllers), None)
        if place is None:
            place = next((h for h in found if h.version == 1 and controller in h.controllers), None)
        if place is None:
            unified = next((h for h in found if h.version == 2), None)
            where = (f"cgroup v2 at {unified.mount} does not offer it ({' '.join(sorted(unified.controllers))})"
                     if unified else "no cgroup v2 hierarchy is mounted")
            raise SandboxError(
                f"cannot apply the {controller} limit: no cgroup hierarchy has the {controller} controller "
                f"({where}, and no v1 hierarchy has it)",
                hint=f"enable the {controller} controller (cgroup v2, or mount its v1 hierarchy), "
                     "or run without that limit",
            )
        plan.setdefault(place, []).append(controller)
    return plan


_DELEGATE_HINT = ("run it in a scope that delegates cgroups to you (systemd-run --user --scope -p Delegate=yes "
                  "sandboxmgr ...), or as root, or without limits")


def delegated(found: list[Hierarchy], controllers: tuple[str, ...]) -> list[Hierarchy]:
    """For an ordinary user (rootless mode, userns.py): the cgroup v2 hierarchy, marked
    ``delegated``, when the parent of the caller's cgroup is the caller's own (a subtree
    delegated to it, as systemd gives a user's services and Delegate=yes scopes) and offers
    ``controllers``; else one error naming what is missing. Never a v1 hierarchy: those are
    not delegated to users, and a limit is never silently left out."""
    what = _limits(controllers)
    unified = next((h for h in found if h.version == 2), None)
    if unified is None:
        raise SandboxError(f"cannot apply {what} as an ordinary user: it needs a cgroup v2 subtree "
                           "delegated to you, and no cgroup v2 hierarchy is mounted (v1 ones are root's)",
                           hint=_DELEGATE_HINT)
    parent = unified.own_dir.parent
    if unified.own.strip("/") == "" or not _mine(parent):
        raise SandboxError(f"cannot apply {what} as an ordinary user: it needs a cgroup v2 subtree "
                           f"delegated to you, and the parent of this process's cgroup ({unified.own} in "
                           f"{unified.mount}) is not yours", hint=_DELEGATE_HINT)
    try:
        offered = frozenset((parent / "cgroup.controllers").read_text().split())
    except OSError:
        offered = frozenset()
    missing = [c for c in controllers if c not in offered]
    if missing:
        raise SandboxError(f"cannot apply {_limits(missing)} as an ordinary user: the cgroup delegated "
                           f"to you ({parent}) offers only: {' '.join(sorted(offered)) or 'no controller'}",
                           hint="delegate the controller to users (systemd: Delegate=cpu memory pids in "
                                "user@.service), or run without that limit")
    return [Hierarchy(2, unified.mount, offered, unified.own, delegated=True)]


def _limits(controllers: tuple[str, ...] | list[str]) -> str:
    """'the memory limit', 'the memory and pids limits'."""
    names = list(controllers)
    if len(names) == 1:
        return f"the {names[0]} limit"
    return f"the {', '.join(names[:-1])} and {names[-1]} limits"


def _mine(directory: Path) -> bool:
    """The caller owns ``directory`` and may make cgroups in it (in the user's namespace the
    user is uid 0; cgroups of root and other users show as the overflow id)."""
    try:
        return os.stat(directory).st_uid == os.geteuid() and os.access(directory, os.W_OK)
    except OSError:
        return False


# --- a run cgroup's directory --------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def manager_alive(name: str) -> bool:
    """Whether the manager that made the run cgroup ``name`` still runs."""
    match = RUN_NAME.match(name)
    if match is None:
        return False
    return process_start_time(int(match.group(1))) == int(match.group(2))


def write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def cgroup_procs(directory: Path) -> list[int]:
    """The live processes of a run's cgroup and of its leaf (a zombie waits for its parent, not for us)."""
    pids: list[int] = []
    for place in (directory, directory / LEAF):
        try:
            pids += [int(line) for line in (place / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return [pid for pid in pids if not _zombie(pid)]


def _zombie(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone already
    return text[text.rfind(")") + 2:].startswith(("Z", "X"))


def remove_dir(directory: Path, wait: float = 2.0) -> bool:
    """rmdir a run's cgroup (its leaf first), waiting a little for exiting processes to leave it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(directory / LEAF)
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(0.01)


def kill_all(directory: Path, wait: float = 5.0) -> bool:
    """SIGKILL every process of a cgroup; True once it is empty."""
    kill_file = directory / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            write(kill_file, "1")
    deadline = time.monotonic() + wait
    while True:
        procs = cgroup_procs(directory)
        if not procs:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def remove_parent(parent: Path) -> None:
    """The ``sandboxmgr`` directory goes when its last run has: it must not keep the
    caller's own cgroup from being removed."""
    with contextlib.suppress(OSError):
        os.rmdir(parent)


# --- what the doctor looks at --------------------------------------------------------------------


@dataclass(frozen=True)
class RunGroup:
    """A run cgroup found on the machine."""

    path: Path
    manager_alive: bool
    procs: tuple[int, ...]


def find_run_groups(found: list[Hierarchy] | None = None, max_depth: int = 8) -> list[RunGroup]:
    """Every ``sandboxmgr/<id>`` cgroup in every hierarchy, whoever's cgroup it sits under."""
    result = []
    for hierarchy in hierarchies() if found is None else found:
        for parent in _group_dirs(hierarchy.mount, max_depth):
            with contextlib.suppress(OSError), os.scandir(parent) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    if entry.is_dir(follow_symlinks=False) and RUN_NAME.match(entry.name):
                        path = Path(entry.path)
                        result.append(RunGroup(path, manager_alive(entry.name), tuple(cgroup_procs(path))))
    return result


def _group_dirs(top: Path, max_depth: int) -> Iterator[Path]:
    stack = [(top, 0)]
    while stack:
        current, depth = stack.pop()
        try:
            entries = [e for e in os.scandir(current) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for entry in entries:
            if entry.name == GROUP_DIR:
                yield Path(entry.path)
            elif depth < max_depth:
                stack.append((Path(entry.path), depth + 1))


def remove_run_group(group: RunGroup) -> bool:
    """Kill what is left in a dead run's cgroup and remove it."""
    if not kill_all(group.path):
        return False
    removed = remove_dir(group.path)
    if removed:
        remove_parent(group.path.parent)
    return removed
